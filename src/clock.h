/*
 * clock.h — the monotonic clock in seconds, for the timings that reports
 * and notes print.
 */
#ifndef NMP_CLOCK_H
#define NMP_CLOCK_H

#include <time.h>

static inline double nmp_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#endif
