// out_check.c: see out_check.h.  Writability is probed by creating a file, not with access():
// root passes access() on a read-only file system or a folder it cannot write in.
#include "io/out_check.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/util.h"

// HDF5's signature sits at byte 0 or, after a user block, at 512, 1024, 2048, ...
static int is_hdf5(const char *path, off_t size) {
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    int fd = open(path, O_RDONLY), found = 0;
    if (fd < 0) return 0;
    for (off_t at = 0; !found && at + 8 <= size; at = at ? 2 * at : 512) {
        unsigned char b[8];
        found = pread(fd, b, 8, at) == 8 && !memcmp(b, sig, 8);
    }
    close(fd);
    return found;
}

// Creates and removes DIR/.qkscope-write-test-PID: 0, or the errno of the failure.
static int probe_dir(const char *dir) {
    char *probe = qk_malloc(strlen(dir) + 64);
    sprintf(probe, "%s/.qkscope-write-test-%d", dir, (int)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0666), e = errno;
    if (fd >= 0) close(fd), unlink(probe);
    free(probe);
    return fd >= 0 ? 0 : e;
}

int qk_out_check_file(const char *path, int hdf5) {
    if (!*path) return qk_err("-o: empty output path");
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) return qk_err("%s: is a folder; the output is a file (give a file name)", path);
        if (!S_ISREG(st.st_mode)) return qk_err("%s: exists and is not a regular file; refusing to write there", path);
        const int is = is_hdf5(path, st.st_size);  // an output replaces only a file of its own kind
        if (is != !!hdf5)
            return qk_err("%s: exists and is %s HDF5 file (%s); refusing to overwrite it", path, is ? "an" : "not an",
                          is ? "a run or static file?" : "an input?");
    }
    // NAME.tmp is probed as a file of another name in its folder (a process watching for NAME.tmp,
    // or a stale one, is not disturbed); only a folder named NAME.tmp is in the way itself.
    char *tmp = qk_malloc(strlen(path) + 5), *copy = qk_strdup(path);
    sprintf(tmp, "%s.tmp", path);
    int e = probe_dir(dirname(copy));
    int rc = stat(tmp, &st) == 0 && S_ISDIR(st.st_mode) ? qk_err("%s: is a folder; cannot write the output there", tmp)
             : e ? qk_err("%s: cannot write the output: %s", tmp, strerror(e))
                 : 0;
    free(tmp), free(copy);
    return rc;
}

int qk_out_check_not_input(const char *path, const char *const *inputs, int n) {
    struct stat o, in;
    if (stat(path, &o)) return 0;
    for (int k = 0; k < n; k++)
        if (inputs[k] && !stat(inputs[k], &in) && in.st_dev == o.st_dev && in.st_ino == o.st_ino)
            return qk_err("%s: -o names the input %s; refusing to overwrite it", path, inputs[k]);
    return 0;
}

int qk_out_check_folder(const char *path) {
    if (!*path) return qk_err("-o: empty output path");
    struct stat st;
    if (stat(path, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) return qk_err("%s: exists and is not a folder; the output is a folder", path);
        int e = probe_dir(path);
        return e ? qk_err("%s: cannot write in the output folder: %s", path, strerror(e)) : 0;
    }
    char *copy = qk_strdup(path);
    const char *parent = dirname(copy);
    int e = stat(parent, &st) == 0 && S_ISDIR(st.st_mode) ? probe_dir(parent) : -1;
    int rc = e < 0  ? qk_err("%s: cannot create the output folder: its parent is not an existing folder", path)
             : e ? qk_err("%s: cannot create the output folder: %s", path, strerror(e))
                 : 0;
    free(copy);
    return rc;
}
