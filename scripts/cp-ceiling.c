/*
 * What can copy a page-cached file faster than one copy_file_range (GNU cp,
 * std::fs::copy, tokio::fs::copy)? Each variant copies SRC to DST (removed first) and
 * prints MiB/s; scripts/cp-ceiling.sh runs them interleaved. Built and run by that
 * script; see README "quell cp" for the results.
 *
 *   cp-ceiling SRC DST VARIANT THREADS CHUNK_MIB
 *   VARIANT: cfr           copy_file_range, THREADS workers on CHUNK_MIB ranges
 *            cfr-falloc    the same after fallocate(FALLOC_FL_KEEP_SIZE) of the whole file
 *            mmap-pread    DST mapped shared, each range MADV_POPULATE_WRITE then pread
 *            mmap-write    SRC mapped, each range fallocate(KEEP_SIZE) then pwrite from the map
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static int sfd, dfd;
static long long size, chunk, next_off;
static char *map, *smap;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static int take(long long *off, long long *len) {
  pthread_mutex_lock(&mu);
  *off = next_off;
  next_off += chunk;
  pthread_mutex_unlock(&mu);
  if (*off >= size) return 0;
  *len = size - *off < chunk ? size - *off : chunk;
  return 1;
}

static void *cfr(void *unused) {
  long long off, len;
  while (take(&off, &len)) {
    loff_t i = off, o = off;
    while (len > 0) {
      ssize_t n = copy_file_range(sfd, &i, dfd, &o, len, 0);
      if (n <= 0) { perror("copy_file_range"); exit(1); }
      len -= n;
    }
  }
  return unused;
}

static void *mmap_pread(void *unused) {
  long long off, len;
  while (take(&off, &len)) {
    madvise(map + off, len, MADV_POPULATE_WRITE);
    while (len > 0) {
      ssize_t n = pread(sfd, map + off, len, off);
      if (n <= 0) { perror("pread"); exit(1); }
      len -= n;
      off += n;
    }
  }
  return unused;
}

static void *mmap_write(void *unused) {
  long long off, len;
  while (take(&off, &len)) {
    fallocate(dfd, FALLOC_FL_KEEP_SIZE, off, len);
    while (len > 0) {
      ssize_t n = pwrite(dfd, smap + off, len, off);
      if (n <= 0) { perror("pwrite"); exit(1); }
      len -= n;
      off += n;
    }
  }
  return unused;
}

int main(int argc, char **argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: %s SRC DST cfr|cfr-falloc|mmap-pread|mmap-write THREADS CHUNK_MIB\n",
            argv[0]);
    return 2;
  }
  const char *variant = argv[3];
  int threads = atoi(argv[4]);
  chunk = atoll(argv[5]) << 20;
  if (threads < 1 || threads > 64 || chunk <= 0) { fprintf(stderr, "bad THREADS or CHUNK_MIB\n"); return 2; }
  sfd = open(argv[1], O_RDONLY);
  unlink(argv[2]);
  dfd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (sfd < 0 || dfd < 0) { perror("open"); return 1; }
  struct stat st;
  fstat(sfd, &st);
  size = st.st_size;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  void *(*work)(void *) = cfr;
  if (!strcmp(variant, "cfr-falloc")) {
    if (fallocate(dfd, FALLOC_FL_KEEP_SIZE, 0, size)) perror("fallocate");
  } else if (!strcmp(variant, "mmap-pread")) {
    if (ftruncate(dfd, size)) { perror("ftruncate"); return 1; }
    map = mmap(0, size, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0);
    if (map == MAP_FAILED) { perror("mmap"); return 1; }
    work = mmap_pread;
  } else if (!strcmp(variant, "mmap-write")) {
    smap = mmap(0, size, PROT_READ, MAP_SHARED, sfd, 0);
    if (smap == MAP_FAILED) { perror("mmap"); return 1; }
    work = mmap_write;
  } else if (strcmp(variant, "cfr")) {
    fprintf(stderr, "unknown variant %s\n", variant);
    return 2;
  }
  pthread_t t[64];
  for (int k = 0; k < threads; k++) pthread_create(&t[k], 0, work, 0);
  for (int k = 0; k < threads; k++) pthread_join(t[k], 0);
  if (map) munmap(map, size);
  if (smap) munmap(smap, size);
  close(dfd);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  printf("%.0f\n", size / 1048576.0 / s);
  return 0;
}
