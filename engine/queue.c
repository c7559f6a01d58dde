/* The bounded request queue (see queue.h): a ring buffer under one mutex, with one
 * condition variable that wakes the scheduler on push and on close. */
#include "queue.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

uint64_t queue_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

balsa_status queue_init(request_queue *q, int capacity)
{
    BALSA_ASSERT(capacity >= 1);
    q->ring = calloc((size_t)capacity, sizeof *q->ring);
    if (!q->ring)
        return BALSA_ERR_OOM;
    q->capacity = capacity;
    q->head = q->count = 0;
    q->weight = 0;
    q->deadline_floor_ns = 0;
    q->closed = 0;
    pthread_mutex_init(&q->mu, NULL);
    /* The condition variable waits on CLOCK_MONOTONIC, like every deadline here. */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);
    return BALSA_OK;
}

void queue_free(request_queue *q)
{
    BALSA_ASSERT(q->count == 0);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q->ring);
    q->ring = NULL;
}

balsa_status queue_push(request_queue *q, void *ptr, int weight, uint64_t deadline_ns)
{
    pthread_mutex_lock(&q->mu);
    balsa_status st = BALSA_OK;
    if (q->closed)
        st = BALSA_ERR_SHUTDOWN;
    else if (q->count == q->capacity)
        st = BALSA_ERR_FULL;
    else {
        queue_item *it = &q->ring[(q->head + q->count) % q->capacity];
        it->ptr = ptr;
        it->weight = weight;
        it->enqueued_ns = queue_now_ns();
        it->deadline_ns = deadline_ns;
        q->count++;
        q->weight += weight;
        if (deadline_ns && (q->deadline_floor_ns == 0 || deadline_ns < q->deadline_floor_ns))
            q->deadline_floor_ns = deadline_ns;
        pthread_cond_signal(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
    return st;
}

int queue_pop(request_queue *q, queue_item *out)
{
    pthread_mutex_lock(&q->mu);
    int got = q->count > 0;
    if (got) {
        *out = q->ring[q->head];
        q->head = (q->head + 1) % q->capacity;
        q->count--;
        q->weight -= out->weight;
    }
    pthread_mutex_unlock(&q->mu);
    return got;
}

long queue_wait(request_queue *q, long min_weight, uint64_t until_ns)
{
    struct timespec ts = {(time_t)(until_ns / 1000000000u), (long)(until_ns % 1000000000u)};
    pthread_mutex_lock(&q->mu);
    while (q->weight < min_weight && !q->closed) {
        if (until_ns == 0) {
            pthread_cond_wait(&q->cv, &q->mu);
        } else if (pthread_cond_timedwait(&q->cv, &q->mu, &ts) == ETIMEDOUT) {
            break;
        }
    }
    long w = q->weight;
    pthread_mutex_unlock(&q->mu);
    return w;
}

int queue_take_expired(request_queue *q, uint64_t now_ns, queue_item *out, int max)
{
    pthread_mutex_lock(&q->mu);
    /* Without the floor, the unbatched demo server (max_batch_size 1, 64 clients, every
     * request with the default 30 s deadline) spent 5% of its scheduler thread rewriting
     * a queue of 63 items before each step (perf). */
    if (q->deadline_floor_ns == 0 || now_ns < q->deadline_floor_ns) {
        pthread_mutex_unlock(&q->mu);
        return 0;
    }
    int taken = 0, kept = 0;
    uint64_t floor = 0;
    for (int i = 0; i < q->count; i++) {
        queue_item it = q->ring[(q->head + i) % q->capacity];
        if (taken < max && it.deadline_ns && it.deadline_ns <= now_ns) {
            out[taken++] = it;
            q->weight -= it.weight;
        } else {
            q->ring[(q->head + kept++) % q->capacity] = it;
            if (it.deadline_ns && (floor == 0 || it.deadline_ns < floor))
                floor = it.deadline_ns;
        }
    }
    q->count = kept;
    q->deadline_floor_ns = floor;
    pthread_mutex_unlock(&q->mu);
    return taken;
}

uint64_t queue_oldest_ns(request_queue *q)
{
    pthread_mutex_lock(&q->mu);
    uint64_t t = q->count ? q->ring[q->head].enqueued_ns : 0;
    pthread_mutex_unlock(&q->mu);
    return t;
}

uint64_t queue_min_deadline_ns(request_queue *q)
{
    pthread_mutex_lock(&q->mu);
    uint64_t t = 0;
    for (int i = 0; i < q->count; i++) {
        uint64_t d = q->ring[(q->head + i) % q->capacity].deadline_ns;
        if (d && (t == 0 || d < t))
            t = d;
    }
    pthread_mutex_unlock(&q->mu);
    return t;
}

int queue_depth(request_queue *q)
{
    pthread_mutex_lock(&q->mu);
    int n = q->count;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void queue_close(request_queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

int queue_is_closed(request_queue *q)
{
    pthread_mutex_lock(&q->mu);
    int c = q->closed;
    pthread_mutex_unlock(&q->mu);
    return c;
}
