// out_check.h: a command's output is checked before any work, so that a run of hours does not
// end in a failed rename, and an input file given as -o by mistake is never overwritten.
#pragma once

// An output file NAME, written as NAME.tmp and renamed when complete.  Refused: NAME is a
// folder or not a regular file; NAME exists and is not an HDF5 file (when `hdf5`: qkscope's HDF5
// outputs only ever replace HDF5 files, so `-o configs/demo.ini` cannot destroy a config; the
// other outputs (`hdf5` 0: pages, token files) never replace an HDF5 file);
// NAME.tmp cannot be created there (missing folder, no permission, read-only file system).  The
// probe file is removed again.  -1 with one line naming the path and the reason.
int qk_out_check_file(const char *path, int hdf5);

// An output folder: an existing folder we can write in, or a new one whose parent we can write in
// (not created here).  A file of that name is refused.
int qk_out_check_folder(const char *path);

// An output that is none of the n inputs (the same file under any name: device and inode), so
// that `-o` naming an input by mistake never overwrites it.  Inputs that do not exist are skipped.
int qk_out_check_not_input(const char *path, const char *const *inputs, int n);
