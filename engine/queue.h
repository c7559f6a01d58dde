/* A bounded, thread-safe FIFO of requests for one model: producers (HTTP threads) push,
 * one consumer (the model's scheduler) waits, pops, and removes requests whose deadline
 * passed. Each item carries a weight (its number of sequences) so the scheduler can wait
 * until enough sequences are queued to fill its free slots. Times are CLOCK_MONOTONIC
 * nanoseconds (queue_now_ns). */
#ifndef BALSA_QUEUE_H
#define BALSA_QUEUE_H

#include <pthread.h>
#include <stdint.h>

#include "../kernels/status.h"

typedef struct {
    void *ptr;
    int weight;
    uint64_t enqueued_ns;
    uint64_t deadline_ns; /* 0: none */
} queue_item;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    queue_item *ring;
    int capacity, head, count;
    long weight; /* sum of the queued items' weights */
    /* No queued deadline is earlier than this (0: no item has one). Pushes lower it, a
     * scan of queue_take_expired makes it exact again; pops leave it, a bound still. */
    uint64_t deadline_floor_ns;
    int closed;
} request_queue;

/* Monotonic clock in nanoseconds. */
uint64_t queue_now_ns(void);

/* Makes an empty queue holding at most capacity items (>= 1). BALSA_ERR_OOM on failure. */
balsa_status queue_init(request_queue *q, int capacity);
/* Frees the queue; it must be empty and no thread may be using it. */
void queue_free(request_queue *q);

/* Appends ptr stamped with now. BALSA_ERR_FULL when capacity items are queued,
 * BALSA_ERR_SHUTDOWN once closed; the caller keeps ptr then. */
balsa_status queue_push(request_queue *q, void *ptr, int weight, uint64_t deadline_ns);

/* Takes the oldest item into *out; returns 0 when empty (does not wait). */
int queue_pop(request_queue *q, queue_item *out);

/* Waits until the queued weight is at least min_weight, the queue is closed, or the
 * monotonic clock reaches until_ns (0: no time limit). Returns the queued weight. */
long queue_wait(request_queue *q, long min_weight, uint64_t until_ns);

/* Removes up to max items whose deadline is <= now_ns into out (oldest first) and
 * returns how many; the others keep their order. Called before every step, it returns at
 * once while now_ns is before every queued deadline. */
int queue_take_expired(request_queue *q, uint64_t now_ns, queue_item *out, int max);

/* Enqueue time of the oldest item, 0 when empty. */
uint64_t queue_oldest_ns(request_queue *q);

/* The earliest deadline among the queued items, 0 when none has one. */
uint64_t queue_min_deadline_ns(request_queue *q);
int queue_depth(request_queue *q);

/* Refuses further pushes and wakes the waiter; queued items stay to be popped. */
void queue_close(request_queue *q);
int queue_is_closed(request_queue *q);

#endif
