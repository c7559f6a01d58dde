/* Tests for the bounded request queue (engine/queue.c): order, capacity, close, weights,
 * deadline expiry, and waiting with and without a producer thread. */
#include <pthread.h>

#include "engine/queue.h"
#include "harness.h"

TEST(fifo_and_capacity)
{
    request_queue q;
    REQUIRE(queue_init(&q, 3) == BALSA_OK);
    int v[4];
    for (int i = 0; i < 3; i++)
        CHECK(queue_push(&q, &v[i], 1, 0) == BALSA_OK);
    CHECK(queue_push(&q, &v[3], 1, 0) == BALSA_ERR_FULL);
    CHECK(queue_depth(&q) == 3);
    queue_item it;
    for (int i = 0; i < 3; i++) {
        REQUIRE(queue_pop(&q, &it));
        CHECK(it.ptr == &v[i]);
        CHECK(it.enqueued_ns > 0);
    }
    CHECK(!queue_pop(&q, &it));
    /* wraps around the ring */
    for (int r = 0; r < 5; r++) {
        CHECK(queue_push(&q, &v[r % 4], 1, 0) == BALSA_OK);
        REQUIRE(queue_pop(&q, &it));
        CHECK(it.ptr == &v[r % 4]);
    }
    queue_free(&q);
}

TEST(close_refuses_but_drains)
{
    request_queue q;
    REQUIRE(queue_init(&q, 4) == BALSA_OK);
    int a, b;
    CHECK(queue_push(&q, &a, 2, 0) == BALSA_OK);
    queue_close(&q);
    CHECK(queue_is_closed(&q));
    CHECK(queue_push(&q, &b, 1, 0) == BALSA_ERR_SHUTDOWN);
    CHECK(queue_wait(&q, 100, 0) == 2); /* closed: returns at once */
    queue_item it;
    REQUIRE(queue_pop(&q, &it));
    CHECK(it.ptr == &a && it.weight == 2);
    queue_free(&q);
}

TEST(expiry_keeps_order)
{
    request_queue q;
    REQUIRE(queue_init(&q, 8) == BALSA_OK);
    int v[6];
    uint64_t now = queue_now_ns();
    /* deadlines: past, none, future, past, none, past */
    uint64_t dl[6] = {now - 1, 0, now + 1000000000u, now - 5, 0, now};
    for (int i = 0; i < 6; i++)
        REQUIRE(queue_push(&q, &v[i], i + 1, dl[i]) == BALSA_OK);
    queue_item out[8];
    int n = queue_take_expired(&q, now, out, 8);
    REQUIRE(n == 3);
    CHECK(out[0].ptr == &v[0] && out[1].ptr == &v[3] && out[2].ptr == &v[5]);
    CHECK(queue_depth(&q) == 3);
    CHECK(queue_wait(&q, 1, 0) == 2 + 3 + 5); /* remaining weights */
    queue_item it;
    int want[3] = {1, 2, 4};
    for (int i = 0; i < 3; i++) {
        REQUIRE(queue_pop(&q, &it));
        CHECK(it.ptr == &v[want[i]]);
    }
    queue_free(&q);
}

TEST(min_deadline)
{
    request_queue q;
    REQUIRE(queue_init(&q, 4) == BALSA_OK);
    int v[3];
    CHECK(queue_min_deadline_ns(&q) == 0);
    CHECK(queue_push(&q, &v[0], 1, 0) == BALSA_OK);
    CHECK(queue_min_deadline_ns(&q) == 0); /* no deadline at all */
    CHECK(queue_push(&q, &v[1], 1, 900) == BALSA_OK);
    CHECK(queue_push(&q, &v[2], 1, 700) == BALSA_OK);
    CHECK(queue_min_deadline_ns(&q) == 700);
    queue_item it;
    REQUIRE(queue_pop(&q, &it) && queue_pop(&q, &it));
    CHECK(queue_min_deadline_ns(&q) == 700);
    REQUIRE(queue_pop(&q, &it));
    CHECK(queue_min_deadline_ns(&q) == 0);
    queue_free(&q);
}

/* The early return of queue_take_expired must not hide an expired item: one pushed after a
 * scan with an earlier deadline, or one left behind a popped item whose deadline the
 * floor still remembers. Times are plain numbers: take_expired compares, never reads the
 * clock. */
TEST(expiry_after_pops_and_pushes)
{
    request_queue q;
    REQUIRE(queue_init(&q, 4) == BALSA_OK);
    int v[4];
    queue_item out[4], it;
    CHECK(queue_push(&q, &v[0], 1, 1000) == BALSA_OK);
    CHECK(queue_push(&q, &v[1], 1, 2000) == BALSA_OK);
    CHECK(queue_take_expired(&q, 500, out, 4) == 0);
    REQUIRE(queue_pop(&q, &it) && it.ptr == &v[0]);
    CHECK(queue_take_expired(&q, 1500, out, 4) == 0); /* past the popped one's deadline */
    CHECK(queue_push(&q, &v[2], 1, 1200) == BALSA_OK);
    CHECK(queue_push(&q, &v[3], 1, 0) == BALSA_OK);
    REQUIRE(queue_take_expired(&q, 1500, out, 4) == 1);
    CHECK(out[0].ptr == &v[2]);
    CHECK(queue_take_expired(&q, 1999, out, 4) == 0);
    REQUIRE(queue_take_expired(&q, 2000, out, 4) == 1);
    CHECK(out[0].ptr == &v[1]);
    CHECK(queue_take_expired(&q, (uint64_t)1 << 62, out, 4) == 0); /* no deadline left */
    CHECK(queue_depth(&q) == 1);
    REQUIRE(queue_pop(&q, &it) && it.ptr == &v[3]);
    queue_free(&q);
}

TEST(wait_times_out)
{
    request_queue q;
    REQUIRE(queue_init(&q, 2) == BALSA_OK);
    uint64_t t0 = queue_now_ns();
    CHECK(queue_wait(&q, 1, t0 + 20000000u) == 0);
    CHECK(queue_now_ns() - t0 >= 20000000u);
    CHECK(queue_oldest_ns(&q) == 0);
    queue_free(&q);
}

static request_queue shared_q;
static int produced[5];

static void *producer(void *arg)
{
    (void)arg;
    for (int i = 0; i < 5; i++)
        queue_push(&shared_q, &produced[i], 1, 0);
    return NULL;
}

TEST(wait_wakes_on_push)
{
    REQUIRE(queue_init(&shared_q, 8) == BALSA_OK);
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, producer, NULL) == 0);
    CHECK(queue_wait(&shared_q, 5, 0) == 5);
    pthread_join(t, NULL);
    queue_item it;
    int n = 0;
    while (queue_pop(&shared_q, &it))
        CHECK(it.ptr == &produced[n++]);
    CHECK(n == 5);
    queue_free(&shared_q);
}

int main(void)
{
    RUN(fifo_and_capacity);
    RUN(close_refuses_but_drains);
    RUN(expiry_keeps_order);
    RUN(min_deadline);
    RUN(expiry_after_pops_and_pushes);
    RUN(wait_times_out);
    RUN(wait_wakes_on_push);
    HARNESS_END();
}
