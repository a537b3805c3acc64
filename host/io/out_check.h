// out_check.h: a command's output is checked before any work, so that a run of hours does not
// end in a failed rename, and an input file given as -o by mistake is never overwritten.
#pragma once

// An output file NAME, written as NAME.tmp and renamed when complete.  Refused: NAME is a
// folder or not a regular file; NAME exists and is not an HDF5 file (when `hdf5`: qkscope's HDF5
// outputs only ever replace HDF5 files, so `-o configs/demo.ini` cannot destroy a config);
// NAME.tmp cannot be created there (missing folder, no permission, read-only file system).  The
// probe file is removed again.  -1 with one line naming the path and the reason.
int qk_out_check_file(const char *path, int hdf5);

// An output folder: an existing folder we can write in, or a new one whose parent we can write in
// (not created here).  A file of that name is refused.
int qk_out_check_folder(const char *path);
