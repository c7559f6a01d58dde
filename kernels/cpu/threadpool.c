/* The persistent thread pool (threadpool.h). A job is published by bumping a generation
 * counter; workers spin on it for a short while after each job (so that back-to-back
 * products, like the steps of an LSTM, do not pay a futex wake-up each) and then sleep on
 * a condition variable, so an idle server does not burn its cores. */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

/* How long a worker (or the caller waiting for workers) spins before sleeping. */
#define SPIN_NS 50000

struct threadpool {
    int nthreads;
    pthread_t *tids;
    pthread_mutex_t run_lock; /* one threadpool_run at a time */
    pthread_mutex_t mu;
    pthread_cond_t work_cv, done_cv;
    atomic_uint gen;    /* bumped (under mu) for every job and for stop */
    atomic_int pending; /* tasks given to workers and not yet finished */
    int stop;           /* under mu */
    threadpool_fn fn;   /* the current job (under mu) */
    void *arg;
    int ntasks;
};

typedef struct {
    threadpool *p;
    int task;
} worker_arg;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void *worker_main(void *varg)
{
    worker_arg wa = *(worker_arg *)varg;
    free(varg);
    threadpool *p = wa.p;
    /* Not the current gen: a worker that starts late must still see every job posted
     * since the pool was created (gen starts at 0). */
    unsigned seen = 0;
    for (;;) {
        long long deadline = now_ns() + SPIN_NS;
        while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen &&
               now_ns() < deadline)
            cpu_relax();
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->gen) == seen && !p->stop)
            pthread_cond_wait(&p->work_cv, &p->mu);
        /* The job is read under mu, where threadpool_run wrote it: a worker that had
         * no task in one job may wake only once the next job is posted. */
        int stop = p->stop, ntasks = p->ntasks;
        threadpool_fn fn = p->fn;
        void *arg = p->arg;
        seen = atomic_load(&p->gen);
        pthread_mutex_unlock(&p->mu);
        if (stop)
            return NULL;
        if (wa.task < ntasks) {
            fn(arg, wa.task, ntasks);
            if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
                pthread_mutex_lock(&p->mu);
                pthread_cond_signal(&p->done_cv);
                pthread_mutex_unlock(&p->mu);
            }
        }
    }
}

static void stop_workers(threadpool *p, int started)
{
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < started; i++)
        pthread_join(p->tids[i], NULL);
}

balsa_status threadpool_create(int threads, threadpool **out)
{
    *out = NULL;
    if (threads < 1)
        return BALSA_ERR_INVALID;
    threadpool *p = calloc(1, sizeof *p);
    if (!p)
        return BALSA_ERR_OOM;
    p->nthreads = threads;
    p->tids = calloc((size_t)threads, sizeof *p->tids);
    if (!p->tids) {
        free(p);
        return BALSA_ERR_OOM;
    }
    pthread_mutex_init(&p->run_lock, NULL);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    for (int i = 1; i < threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa)
            *wa = (worker_arg){p, i};
        if (!wa || pthread_create(&p->tids[i - 1], NULL, worker_main, wa) != 0) {
            free(wa);
            p->nthreads = i;
            threadpool_free(p);
            return wa ? BALSA_ERR_UNSUPPORTED : BALSA_ERR_OOM;
        }
    }
    *out = p;
    return BALSA_OK;
}

void threadpool_free(threadpool *p)
{
    if (!p)
        return;
    stop_workers(p, p->nthreads - 1);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->done_cv);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->run_lock);
    free(p->tids);
    free(p);
}

int threadpool_threads(const threadpool *p) { return p->nthreads; }

void threadpool_run(threadpool *p, threadpool_fn fn, void *arg, int ntasks)
{
    BALSA_ASSERT(ntasks >= 1 && ntasks <= p->nthreads);
    if (ntasks == 1) {
        fn(arg, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->run_lock);
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->arg = arg;
    p->ntasks = ntasks;
    atomic_store(&p->pending, ntasks - 1);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);

    fn(arg, 0, ntasks);

    long long deadline = now_ns() + SPIN_NS;
    while (atomic_load_explicit(&p->pending, memory_order_acquire) != 0 && now_ns() < deadline)
        cpu_relax();
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->pending) != 0)
        pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    pthread_mutex_unlock(&p->run_lock);
}
