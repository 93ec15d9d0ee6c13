// noise.so: an LD_PRELOAD library that gives a process one more thread, which wakes every
// NOISE_US microseconds and sleeps again, doing nothing else. It stands in for the Go
// runtime's own wake-ups (sysmon, the threads a yield wakes) in a C server, to measure what
// wake-ups inside the server's scheduler group cost it; without NOISE_US it starts nothing.
//
//   cc -O2 -shared -fPIC -pthread bench/noise/noise.c -o /tmp/noise.so
//   bench/probe --conns 256 --depth 1 bench/.build/demo_server
//       "env LD_PRELOAD=/tmp/noise.so NOISE_US=1000 bench/.build/demo_server"   (one line)
//
// The environment reaches the children, so each process of the server gets the thread.
// NOISE_BATCH=1 puts the thread under SCHED_BATCH, whose wake-ups preempt no running thread:
// what the wake-ups cost through preemption, apart from what they cost at all.
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

static void *wake_and_sleep(void *arg) {
	if (getenv("NOISE_BATCH") != NULL) {
		struct sched_param none = {0};
		sched_setscheduler(0, SCHED_BATCH, &none); // 0: this thread
	}
	struct timespec ts = {(long)arg / 1000000, (long)arg % 1000000 * 1000};
	for (;;) {
		nanosleep(&ts, NULL);
	}
	return NULL;
}

__attribute__((constructor)) static void start(void) {
	const char *v = getenv("NOISE_US");
	long us = v ? atol(v) : 0;
	pthread_t t;
	if (us > 0 && pthread_create(&t, NULL, wake_and_sleep, (void *)us) == 0) {
		pthread_detach(t);
	}
}
