/* Shifts this process's wall clock (CLOCK_REALTIME) by
 * FLOTILLA_TEST_CLOCK_SKEW_MS milliseconds and leaves the monotonic clocks
 * alone, as on a machine whose clock has drifted. Preloaded (LD_PRELOAD) into
 * a peer or node by the end-to-end tests of `flotilla doctor`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);
static long long skew_ns;

__attribute__((constructor)) static void load(void) {
    real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    const char *ms = getenv("FLOTILLA_TEST_CLOCK_SKEW_MS");
    skew_ns = ms ? atoll(ms) * 1000000LL : 0;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime) {
        load();
    }
    int r = real_clock_gettime(id, ts);
    if (r == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + skew_ns;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return r;
}
