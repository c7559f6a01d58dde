/* Sequences kept by the server (Triton's sequence extension): the LSTM state that one
 * request of a sequence leaves behind, stored under the sequence's id until the next
 * request of that sequence continues from it, so that a client streams a long input in
 * pieces without sending the state back and forth. One store per loaded model instance
 * (a reload starts with none); bounded in count; a sequence idle for longer than the
 * idle time is dropped. A sequence runs one request at a time: its entry is held from the
 * moment a request is admitted until that request has run, and a request that fails
 * leaves the state as it was. Thread-safe (one mutex). */
#ifndef BALSA_SEQSTORE_H
#define BALSA_SEQSTORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct seqstore seqstore;
typedef struct seq_entry seq_entry;

/* A store for at most capacity sequences (>= 1) of `floats` floats of state each (h then
 * c), dropped after idle_ms without a request. NULL when out of memory. */
seqstore *seqstore_new(int capacity, int idle_ms, size_t floats);
/* Frees the store; no entry may be held. NULL is ignored. */
void seqstore_free(seqstore *st);

/* Admits one request of the sequence named key (a NUL-terminated id, api.h's seq_key).
 * start: the request begins the sequence (a sequence of that id that is not busy is
 * replaced); else it continues one that is open, and its state is copied into
 * state[0..floats). Returns 0 with *e held for the request (seqstore_end), *fresh 1 when
 * the sequence starts (state untouched) and 0 when state was filled; or, with a message
 * naming the sequence (shown as `shown`) in err: 400 when no such sequence is open (never
 * started, ended, idle for longer than the idle time, or lost with a reload), 409 while
 * another request of it is being served, 503 when every slot is taken by a sequence that
 * is not yet idle. */
int seqstore_begin(seqstore *st, const char *key, const char *shown, int start,
                   uint64_t now_ns, seq_entry **e, int *fresh, float *state, char *err,
                   size_t errlen);

/* Ends the request that holds e. state: its final state (floats floats), stored for the
 * next request; NULL when the request did not run to its end (the sequence keeps the
 * state it had; a sequence that was starting is dropped). end: the request was the
 * sequence's last; on success its entry is dropped. */
void seqstore_end(seqstore *st, seq_entry *e, const float *state, int end, uint64_t now_ns);

/* Sequences open now (held, or not yet idle for longer than the idle time). */
int seqstore_open(seqstore *st, uint64_t now_ns);

#endif
