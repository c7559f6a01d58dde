/* A persistent pool of worker threads for the CPU backend: created once with the backend,
 * so that a product never pays for creating threads, only for waking them. */
#ifndef BALSA_THREADPOOL_H
#define BALSA_THREADPOOL_H

#include "../status.h"

typedef struct threadpool threadpool;

/* The work of one call: fn(arg, task, ntasks) for task = 0..ntasks-1, each on its own
 * thread (task 0 on the caller). */
typedef void (*threadpool_fn)(void *arg, int task, int ntasks);

/* Starts threads - 1 workers (threads >= 1; 1 means the caller alone, no worker).
 * Returns BALSA_ERR_INVALID for threads < 1, BALSA_ERR_OOM or BALSA_ERR_UNSUPPORTED when
 * memory or a thread cannot be had (nothing is left running then). */
balsa_status threadpool_create(int threads, threadpool **out);

/* Stops and joins the workers and frees the pool; safe on NULL. */
void threadpool_free(threadpool *p);

/* The number of threads a call can use (workers + the caller). */
int threadpool_threads(const threadpool *p);

/* Runs fn for tasks 0..ntasks-1 (1 <= ntasks <= threadpool_threads) and returns when all
 * have finished. Calls from several threads are serialised: one runs at a time. */
void threadpool_run(threadpool *p, threadpool_fn fn, void *arg, int ntasks);

#endif
