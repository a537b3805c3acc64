// chunk_writer.h: appends rows to extendible HDF5 datasets with the compression done in worker
// threads and the compressed chunks written with HDF5's direct chunk write (H5Dwrite_chunk),
// so the writer keeps up with the compute and readers still see ordinary shuffle + gzip
// datasets (the bytes are exactly what HDF5's own shuffle and deflate filters produce).
//
// Only the calling thread touches HDF5 (the library is not thread-safe here): workers shuffle and
// deflate; the caller writes finished chunks in submission order, so a file's layout does not
// depend on the thread count.  Datasets whose chunks do not span whole rows fall back to
// ordinary writes.
#pragma once
#include <hdf5.h>
#include <stddef.h>

typedef struct ChunkWriter ChunkWriter;

ChunkWriter *cw_open(int n_threads);
// Registers an extendible dataset made by qk_h5_dataset_ext; returns its handle (>= 0) or -1.
int cw_add(ChunkWriter *w, hid_t dset, hid_t mem_type);
// Appends nrows rows (C order, the dataset's row size) to dataset handle h.
int cw_append(ChunkWriter *w, int h, const void *rows, size_t nrows);
// A whole dataset through the workers: nrows rows into the extendible dataset dset (made by
// qk_h5_dataset_ext, empty), which the writer closes at cw_flush.  rows may be freed on return.
int cw_write_whole(ChunkWriter *w, hid_t dset, hid_t mem_type, const void *rows, size_t nrows);
// Writes every buffered row (the last chunk of each dataset padded), waits for the workers and
// forgets the datasets (the caller closes them, except those of cw_write_whole).  Call before
// closing the file.
int cw_flush(ChunkWriter *w);
// Drops every buffered row and pending chunk without writing them (an output being abandoned:
// no time spent compressing into a file about to be removed) and forgets the datasets as
// cw_flush does.
void cw_discard(ChunkWriter *w);
void cw_close(ChunkWriter *w);
// Totals since cw_open: bytes before and after compression, and CPU seconds the workers spent.
void cw_stats(ChunkWriter *w, double *raw_bytes, double *compressed_bytes, double *worker_seconds);
