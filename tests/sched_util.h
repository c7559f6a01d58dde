/* Test helper for the tests that drive the batching scheduler directly: submit one request
 * and wait until its done() callback has run. */
#ifndef BALSA_TESTS_SCHED_UTIL_H
#define BALSA_TESTS_SCHED_UTIL_H

#include <pthread.h>

#include "engine/sched.h"

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
} su_sched_waiter;

static inline void su_sched_on_done(sched_request *r)
{
    su_sched_waiter *w = r->user;
    pthread_mutex_lock(&w->mu);
    w->done = 1;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

/* Submits r (its done and user are set here) and waits for it to complete; returns
 * sched_submit's status (the request's own is in r->status). */
static inline balsa_status su_sched_run(sched *sc, sched_request *r)
{
    su_sched_waiter w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    r->done = su_sched_on_done;
    r->user = &w;
    balsa_status st = sched_submit(sc, r);
    if (st != BALSA_OK)
        return st;
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    return BALSA_OK;
}

#endif
