/* The persistent thread pool (threadpool.h). A job is published by bumping a generation
 * counter; workers spin on it for a short while after each job (so that back-to-back
 * products, like the steps of an LSTM, do not pay a futex wake-up each) and then sleep on
 * a condition variable, so an idle server does not burn its cores.
 *
 * The spin adapts to the gaps actually seen: a worker spins twice the longest recent gap
 * between finishing a task and the next job being posted, but only while that gap is
 * short (SPIN_WORTH_NS); when jobs come further apart it spins SPIN_MIN_NS and sleeps.
 * The caller does likewise for its recent waits on the workers. A fixed 50 us spin cost
 * a quarter of the CPU of `balsa serve` with batching (perf: clock_gettime 14% +
 * worker_main 6%): between the products of one step the caller runs the LSTM cell alone
 * for tens of microseconds, and a worker spinning through that takes the CPU that the
 * HTTP threads and the clients need on a small machine, to save one futex wake-up (a few
 * microseconds). Gaps seen while asleep are measured too (from the posting time), so the
 * spin comes back when jobs follow closely again. */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

/* The shortest spin: enough to catch the next product of a pair issued back to back. */
#define SPIN_MIN_NS 2000
/* Recent gaps longer than this are slept through. It is a trade: a sleeping worker costs a
 * futex wake-up and joins the next product late (the caller takes more of its chunks
 * meanwhile), a spinning one burns the gap. 30 us covers the gaps of `balsa bench lstm`
 * at hidden 1500 (the cell at batch 1, about 14 us; the caller's transpose of the input
 * before each product at batch 16, about 20 us), where joining late costs a good part of
 * each 2-thread product; it excludes the demo model's cell at batch 32 under
 * `balsa serve` (about 40 us), where the spin took the HTTP threads' CPU. */
#define SPIN_WORTH_NS 30000
/* How often (in pause instructions) a spin reads the clock: a read costs more than a
 * pause, and the deadline needs no precision. */
#define SPIN_CLOCK_EVERY 16

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
    long long posted_ns; /* when the current job was posted (under mu) */
    long long wait_recent; /* the caller's recent longest wait on workers (under run_lock) */
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

/* Folds one observed gap into a recent-longest estimate, which otherwise decays by an
 * eighth per job (slowly, so that the short gaps between a step's products do not hide
 * the longer one before its next step). Gaps are capped at twice SPIN_WORTH_NS, so that
 * after a long idle time a few closely spaced jobs bring the spin back. */
static long long recent_update(long long recent, long long gap)
{
    long long decayed = recent - recent / 8;
    if (gap > 2 * SPIN_WORTH_NS)
        gap = 2 * SPIN_WORTH_NS;
    return gap > decayed ? gap : decayed;
}

/* The spin for a recent-longest gap estimate: twice it while that is short, else
 * SPIN_MIN_NS. */
static long long spin_budget(long long recent)
{
    long long b = 2 * recent;
    return b < SPIN_MIN_NS || recent > SPIN_WORTH_NS ? SPIN_MIN_NS : b;
}

static void *worker_main(void *varg)
{
    worker_arg wa = *(worker_arg *)varg;
    free(varg);
    threadpool *p = wa.p;
    /* Not the current gen: a worker that starts late must still see every job posted
     * since the pool was created (gen starts at 0). */
    unsigned seen = 0;
    long long recent = SPIN_WORTH_NS; /* spin well until gaps are known */
    for (;;) {
        long long idle_from = now_ns();
        long long deadline = idle_from + spin_budget(recent);
        for (unsigned i = 1; atomic_load_explicit(&p->gen, memory_order_acquire) == seen; i++) {
            if (i % SPIN_CLOCK_EVERY == 0 && now_ns() >= deadline)
                break;
            cpu_relax();
        }
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->gen) == seen && !p->stop)
            pthread_cond_wait(&p->work_cv, &p->mu);
        /* The job is read under mu, where threadpool_run wrote it: a worker that had
         * no task in one job may wake only once the next job is posted. */
        int stop = p->stop, ntasks = p->ntasks;
        threadpool_fn fn = p->fn;
        void *arg = p->arg;
        long long posted = p->posted_ns;
        seen = atomic_load(&p->gen);
        pthread_mutex_unlock(&p->mu);
        /* A job posted before this worker went idle (it was still on the previous one)
         * counts as a zero gap. */
        recent = recent_update(recent, posted > idle_from ? posted - idle_from : 0);
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
    p->wait_recent = SPIN_WORTH_NS;
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
    p->posted_ns = now_ns();
    atomic_store(&p->pending, ntasks - 1);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);

    fn(arg, 0, ntasks);

    long long wait_from = now_ns();
    long long deadline = wait_from + spin_budget(p->wait_recent);
    for (unsigned i = 1; atomic_load_explicit(&p->pending, memory_order_acquire) != 0; i++) {
        if (i % SPIN_CLOCK_EVERY == 0 && now_ns() >= deadline)
            break;
        cpu_relax();
    }
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->pending) != 0)
        pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    p->wait_recent = recent_update(p->wait_recent, now_ns() - wait_from);
    pthread_mutex_unlock(&p->run_lock);
}
