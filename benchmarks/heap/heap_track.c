/* Exact heap bytes in use, for benchmarks/heap_peak.py (LD_PRELOAD; never part of the package).
 *
 * Wraps malloc, calloc, realloc, free, posix_memalign, aligned_alloc and memalign and counts
 * malloc_usable_size() of every live block: the bytes glibc has handed out and not had back.
 * Blocks are counted per glibc heap: the main (brk) heap, and each 64 MiB-aligned heap of a
 * thread arena. heap_track_reset() starts a window; within it the peak of the total and, per
 * heap, the peak and the highest address any block reached (for a thread arena, measured from
 * the heap's base: the pages a fresh arena has touched, i.e. its resident size) are kept.
 * Sampling mallinfo2() instead misses short-lived blocks; this does not.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HEAPS 64
#define ARENA_HEAP_BITS 26 /* glibc's HEAP_MAX_SIZE on 64-bit: 64 MiB, heaps aligned to it */
#define MAIN_HEAP 1        /* key of the brk heap */

static void *(*real_malloc)(size_t);
static void (*real_free)(void *);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);

/* dlsym may call calloc before real_calloc is known: serve those from here (never freed). */
static char boot[1 << 16];
static size_t boot_used;

static _Atomic int on;
static _Atomic long total, total_peak;
static _Atomic uintptr_t key[HEAPS], high[HEAPS];
static _Atomic long live[HEAPS], start[HEAPS], peak[HEAPS];

static void init(void) {
  if (real_malloc) return;
  real_calloc = dlsym(RTLD_NEXT, "calloc");
  real_free = dlsym(RTLD_NEXT, "free");
  real_realloc = dlsym(RTLD_NEXT, "realloc");
  real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
  real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
  real_memalign = dlsym(RTLD_NEXT, "memalign");
  real_malloc = dlsym(RTLD_NEXT, "malloc");
}

static int from_boot(const void *p) { return (const char *)p >= boot && (const char *)p < boot + sizeof boot; }

static uintptr_t heap_key(uintptr_t a) { return a >= 0x7f0000000000UL ? a >> ARENA_HEAP_BITS : MAIN_HEAP; }

static int heap_index(uintptr_t a) {
  uintptr_t k = heap_key(a);
  for (int i = 0; i < HEAPS; i++) {
    uintptr_t expected = 0;
    if (key[i] == k) return i;
    if (key[i] == 0 && atomic_compare_exchange_strong(&key[i], &expected, k)) return i;
    if (key[i] == k) return i;
  }
  return HEAPS - 1; /* more heaps than slots: lumped into the last */
}

static void raise_to(_Atomic long *slot, long value) {
  long seen = *slot;
  while (value > seen && !atomic_compare_exchange_weak(slot, &seen, value)) {}
}

static void counted(void *p) {
  if (!p || from_boot(p)) return;
  long size = (long)malloc_usable_size(p);
  uintptr_t a = (uintptr_t)p;
  int h = heap_index(a);
  long now = atomic_fetch_add(&live[h], size) + size;
  if (!on) return;
  raise_to(&peak[h], now);
  raise_to(&total_peak, atomic_fetch_add(&total, size) + size);
  uintptr_t top = high[h];
  while (a + size > top && !atomic_compare_exchange_weak(&high[h], &top, a + size)) {}
}

static void uncounted(void *p) {
  if (!p || from_boot(p)) return;
  long size = (long)malloc_usable_size(p);
  atomic_fetch_sub(&live[heap_index((uintptr_t)p)], size);
  if (on) atomic_fetch_sub(&total, size);
}

void *malloc(size_t n) {
  init();
  void *p = real_malloc(n);
  counted(p);
  return p;
}

void free(void *p) {
  if (from_boot(p)) return;
  init();
  uncounted(p);
  real_free(p);
}

void *calloc(size_t count, size_t size) {
  if (!real_calloc) {
    size_t n = (count * size + 15) & ~(size_t)15;
    if (boot_used + n > sizeof boot) return NULL;
    void *p = boot + boot_used;
    boot_used += n;
    return p; /* static storage: already zero */
  }
  void *p = real_calloc(count, size);
  counted(p);
  return p;
}

void *realloc(void *p, size_t n) {
  init();
  uncounted(p);
  void *q = real_realloc(p, n);
  counted(q ? q : (n ? p : NULL)); /* on failure p is still live */
  return q;
}

int posix_memalign(void **out, size_t alignment, size_t n) {
  init();
  int error = real_posix_memalign(out, alignment, n);
  if (!error) counted(*out);
  return error;
}

void *aligned_alloc(size_t alignment, size_t n) {
  init();
  void *p = real_aligned_alloc(alignment, n);
  counted(p);
  return p;
}

void *memalign(size_t alignment, size_t n) {
  init();
  void *p = real_memalign(alignment, n);
  counted(p);
  return p;
}

/* Start a window: peaks from the bytes in use now, highest addresses forgotten. */
void heap_track_reset(void) {
  on = 0;
  total = 0;
  total_peak = 0;
  for (int i = 0; i < HEAPS; i++) {
    start[i] = live[i];
    peak[i] = live[i];
    high[i] = 0;
  }
  on = 1;
}

/* Peak of (bytes in use - bytes in use at the reset) over the window. */
long heap_track_peak_delta(void) { return total_peak; }

/* Heap i of the window (0 <= i < HEAPS): its key (0: unused), bytes in use at the reset, peak
 * bytes in use, and the highest block end (0: no block in the window). */
int heap_track_heap(int i, uintptr_t *k, long *at_start, long *max_live, uintptr_t *top) {
  if (i < 0 || i >= HEAPS || key[i] == 0) return 0;
  *k = key[i];
  *at_start = start[i];
  *max_live = peak[i];
  *top = high[i];
  return 1;
}
