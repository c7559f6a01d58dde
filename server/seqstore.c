/* Sequences kept by the server: a chained hash table of entries, each an id, its state
 * and whether a request holds it, under one mutex (seqstore.h). Idle entries are swept
 * when the table is full and otherwise at most once per idle period, so an abandoned
 * sequence costs memory for about two idle periods at most. */
#include "seqstore.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct seq_entry {
    char *key;
    seq_entry *next;   /* the bucket's chain */
    uint64_t last_ns;  /* when its last request was admitted or ended */
    int busy;          /* a request holds it */
    int starting;      /* its first request has not run yet (dropped if that one fails) */
    float state[];     /* h then c */
};

struct seqstore {
    pthread_mutex_t mu;
    seq_entry **buckets;
    size_t mask;        /* buckets - 1 (a power of two) */
    int count, capacity;
    uint64_t idle_ns, last_sweep_ns;
    size_t floats;
};

seqstore *seqstore_new(int capacity, int idle_ms, size_t floats)
{
    seqstore *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    size_t n = 16;
    while (n < 2 * (size_t)capacity)
        n *= 2;
    st->buckets = calloc(n, sizeof *st->buckets);
    if (!st->buckets) {
        free(st);
        return NULL;
    }
    pthread_mutex_init(&st->mu, NULL);
    st->mask = n - 1;
    st->capacity = capacity;
    st->idle_ns = (uint64_t)idle_ms * 1000000u;
    st->floats = floats;
    return st;
}

void seqstore_free(seqstore *st)
{
    if (!st)
        return;
    for (size_t b = 0; b <= st->mask; b++) {
        seq_entry *e = st->buckets[b];
        while (e) {
            seq_entry *next = e->next;
            free(e->key);
            free(e);
            e = next;
        }
    }
    pthread_mutex_destroy(&st->mu);
    free(st->buckets);
    free(st);
}

/* FNV-1a. */
static size_t hash(const char *s)
{
    uint64_t h = 1469598103934665603u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return (size_t)h;
}

static seq_entry **find(seqstore *st, const char *key)
{
    seq_entry **p = &st->buckets[hash(key) & st->mask];
    while (*p && strcmp((*p)->key, key) != 0)
        p = &(*p)->next;
    return p;
}

static void unlink_entry(seqstore *st, seq_entry **p)
{
    seq_entry *e = *p;
    *p = e->next;
    free(e->key);
    free(e);
    st->count--;
}

static int idle(const seqstore *st, const seq_entry *e, uint64_t now_ns)
{
    return !e->busy && now_ns - e->last_ns > st->idle_ns;
}

/* Drops every idle entry. */
static void sweep(seqstore *st, uint64_t now_ns)
{
    st->last_sweep_ns = now_ns;
    for (size_t b = 0; b <= st->mask; b++) {
        seq_entry **p = &st->buckets[b];
        while (*p) {
            if (idle(st, *p, now_ns))
                unlink_entry(st, p);
            else
                p = &(*p)->next;
        }
    }
}

int seqstore_begin(seqstore *st, const char *key, const char *shown, int start,
                   uint64_t now_ns, seq_entry **e, int *fresh, float *state, char *err,
                   size_t errlen)
{
    int code = 0;
    pthread_mutex_lock(&st->mu);
    seq_entry **p = find(st, key), *f = *p;
    if (f && f->busy) {
        snprintf(err, errlen,
                 "sequence_id %s: the sequence's previous request has not been answered yet "
                 "(a sequence runs one request at a time: send the next once this one's "
                 "answer is in)",
                 shown);
        code = 409;
    } else if (!start && f && idle(st, f, now_ns)) {
        snprintf(err, errlen,
                 "sequence_id %s: the sequence ended after %.1f s idle (sequence_idle_ms "
                 "%llu); start it again with sequence_start",
                 shown, (double)(now_ns - f->last_ns) * 1e-9,
                 (unsigned long long)(st->idle_ns / 1000000u));
        unlink_entry(st, p);
        code = 400;
    } else if (!start && !f) {
        snprintf(err, errlen,
                 "sequence_id %s: no such sequence is open (its first request needs "
                 "sequence_start: true; it may also have ended with sequence_end, been idle "
                 "for longer than sequence_idle_ms, or been closed by a model reload)",
                 shown);
        code = 400;
    } else if (!start) {
        memcpy(state, f->state, st->floats * sizeof(float));
        *fresh = 0;
    } else {
        if (!f && st->count >= st->capacity) {
            sweep(st, now_ns);
            p = find(st, key);
        }
        if (!f && st->count >= st->capacity) {
            snprintf(err, errlen,
                     "sequence_id %s: all %d sequence slots are in use (max_sequences); end "
                     "sequences with sequence_end, or retry once idle ones have been dropped",
                     shown, st->capacity);
            code = 503;
        } else if (!f) {
            f = malloc(sizeof *f + st->floats * sizeof(float));
            char *k = f ? strdup(key) : NULL;
            if (!k) {
                free(f);
                snprintf(err, errlen, "sequence_id %s: out of memory", shown);
                code = 500;
            } else {
                f->key = k;
                f->next = NULL;
                *p = f;
                st->count++;
            }
        }
        *fresh = 1;
    }
    if (!code) {
        f->busy = 1;
        f->starting = start;
        f->last_ns = now_ns;
        *e = f;
    }
    /* After the look-up, so that a sequence found idle is named as such above. */
    if (now_ns - st->last_sweep_ns > st->idle_ns)
        sweep(st, now_ns);
    pthread_mutex_unlock(&st->mu);
    return code;
}

void seqstore_end(seqstore *st, seq_entry *e, const float *state, int end, uint64_t now_ns)
{
    pthread_mutex_lock(&st->mu);
    e->busy = 0;
    e->last_ns = now_ns;
    if (state) {
        memcpy(e->state, state, st->floats * sizeof(float));
        e->starting = 0;
    }
    if ((state && end) || (!state && e->starting))
        unlink_entry(st, find(st, e->key));
    pthread_mutex_unlock(&st->mu);
}

int seqstore_open(seqstore *st, uint64_t now_ns)
{
    pthread_mutex_lock(&st->mu);
    int n = 0;
    for (size_t b = 0; b <= st->mask; b++)
        for (const seq_entry *e = st->buckets[b]; e; e = e->next)
            n += !idle(st, e, now_ns);
    pthread_mutex_unlock(&st->mu);
    return n;
}
