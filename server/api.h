/* The inference API shared by POST /infer and `balsa run`: parses a request body
 * ({"model", "inputs" | "text", "output", "top_k", "timeout_ms", "generate",
 * "temperature", "seed", "initial_state", "return_state", "sequence_id", "sequence_start",
 * "sequence_end"}) into engine sequences, checked against the model, and renders the
 * response ({"model", "outputs"[, "states"]}) with floats written by hand. A sequence is
 * token ids, feature vectors, or text for a model with a vocabulary; "generate" continues
 * each sequence by that many tokens;
 * "initial_state" starts sequences from a given LSTM state and "return_state" gives back
 * each one's final state (PyTorch's h_n, c_n), so that a client can continue a sequence in
 * a later request (or, with a sequence id, the server keeps it: seqstore.h). Every client
 * mistake gets a message naming the field and the rule. */
#ifndef BALSA_API_H
#define BALSA_API_H

#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "jsonw.h"

/* One model the request may name. info and model are NULL while it is still loading. */
typedef struct {
    const char *name;
    const model_info *info;
    const balsa_model *model;
} api_model;

typedef struct {
    int max_request_steps;  /* time steps summed over the sequences */
    long max_output_values; /* floats the response may carry */
} api_limits;

/* The longest string sequence_id, in bytes. */
#define API_SEQ_ID_MAX 128

typedef struct {
    int model;          /* index into the api_model table; -1 when not resolved */
    int nseqs;
    engine_seq *seqs;   /* point into tokens/features */
    int32_t *tokens;
    float *features;
    long total_steps;
    int all_steps;      /* "output": "all" */
    int top_k;          /* 0: whole vectors */
    int timeout_ms;     /* -1 when the request gave none */
    float **outputs;    /* one buffer per sequence (api_alloc_outputs); NULL with generate */
    float *out_storage;
    int generate;       /* tokens to generate per sequence; 0: none */
    model_gen_opts gen; /* with generate: its options (the seed is sequence 0's) */
    int seed_given;     /* the request named the seed */
    char stop_text[MODEL_GEN_MAX_STOP][MODEL_GEN_MAX_STOP_BYTES + 1]; /* gen.stop's strings */
    char *stop_ptr[MODEL_GEN_MAX_STOP];
    int32_t **gen_tokens; /* with generate: one buffer of `generate` ids per sequence */
    int *gen_counts;
    int32_t *gen_storage;
    const balsa_model *engine_model; /* for token texts in the response */
    int stream;         /* "stream": true (or v2 generate_stream): the generated tokens go
                         * out as server-sent events while they come (api_stream_event) */
    int return_state;   /* "return_state": true */
    size_t state_size;  /* floats in one h or c: num_layers x directions x hidden_size */
    float *state_in;    /* "initial_state": h then c for each sequence (seqs' h0/c0 point
                         * here; NULL for a sequence whose entry is null) */
    float *state_out;   /* with return_state or a sequence id: h then c for each sequence
                         * (seqs' hn/cn point here; api_alloc_outputs) */
    char seq_key[API_SEQ_ID_MAX + 2]; /* Triton's "sequence_id": 'n' and the number in
                         * decimal, or 's' and the string; "" for a request outside any */
    int seq_start, seq_end; /* "sequence_start", "sequence_end" */
} api_request;

struct cJSON;

/* Writes the message (printf format) to err and returns code: the one way the API's
 * parsers (api.c, v2_tensor.c) report a client mistake. */
int api_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Parses body[0..len) (not NUL-terminated) as one JSON value with only whitespace after
 * it: *root receives it (the caller cJSON_Deletes it). Returns 0, or 400 with *root NULL
 * and in err "body: empty", "body: malformed JSON at byte N", (a NUL inside a string, raw
 * or \u0000, which cJSON's strings cannot hold) "body: a string holds a NUL character at
 * byte N", or "body: unexpected text after the JSON value at byte N" followed by
 * trailing_hint (NULL: nothing). Shared by every JSON body /infer and v2 take. */
int api_parse_json(const char *body, size_t len, struct cJSON **root, const char *trailing_hint,
                   char *err, size_t errlen);

/* Parses and validates body[0..len) (not NUL-terminated) against the models table.
 * Returns 0 and fills r (free with api_request_free), or an HTTP status with a message
 * in err and r left empty: 400 for a malformed body or a broken rule, 404 for an unknown
 * model, 503 when the model is still loading. Even then r->model tells which model the
 * request named (-1 when that is not known), for metrics. */
int api_parse_request(const char *body, size_t len, const api_model *models, int nmodels,
                      const api_limits *lim, api_request *r, char *err, size_t errlen);

/* Triton's sequence parameters, any of them NULL when absent, each named prefix + its name
 * in messages: "sequence_id" (an integer in [0, 2^53] or a string of at most
 * API_SEQ_ID_MAX bytes; 0 and "" mean none), "sequence_start", "sequence_end" (booleans,
 * which need an id), for a request of r->nseqs sequences to am. Sets r's seq_key,
 * seq_start and seq_end. A request with an id must carry one sequence, to a model with a
 * unidirectional LSTM, and gives initial_state only when it starts the sequence. Returns
 * 0, or 400 with the message in err. */
int api_parse_sequence(const struct cJSON *id, const struct cJSON *start,
                       const struct cJSON *end, const char *prefix, const api_model *am,
                       api_request *r, char *err, size_t errlen);

/* r's sequence id as a client wrote it, for messages: the number, or the string in quotes
 * (its first 64 bytes, cut between UTF-8 characters, and "..." when longer); buf should
 * hold 72 bytes. */
const char *api_seq_shown(const api_request *r, char *buf, size_t n);

/* Parses a body of Triton's generate extension (POST /v2/models/{m}/generate) for
 * models[model]: {"text_input": "...", "parameters": {"max_tokens": N (default 16),
 * "temperature": T, "seed": S, "stop": ..., and the sequence parameters}} becomes the request {"text": ..., "generate": N,
 * ...}.
 * Returns 0, or an HTTP status with a message naming the field, as api_parse_request. */
int api_parse_generate(const char *body, size_t len, const api_model *models, int model,
                       const api_limits *lim, api_request *r, char *err, size_t errlen);

/* Renders the answer to a request api_parse_generate made, once generated:
 * {"model_name", "model_version": "1", "text_output": the continuation (not the input, cut
 * before a stop string), "tokens": its ids, "finish_reason", and "seed" when sampled}; NULL
 * when out of memory. */
char *api_render_generate(const api_request *r, const char *model_name, size_t *len);

/* Allocates r's output buffers for the model (sizes as in model_run, or the generated
 * tokens' buffers with generate; with return_state the final states', pointed to by the
 * sequences' hn/cn); -1 when out of memory. */
int api_alloc_outputs(api_request *r, const model_info *info);

void api_request_free(api_request *r);

/* Renders the response for a request whose outputs are filled: a NUL-terminated string
 * (free()), its length in *len; NULL when out of memory. With generate each output is
 * {"tokens": [ids], "text": "...", "finish_reason"} (text when the model has a vocabulary,
 * cut before a stop string) and a sampling
 * request's seed is given back; top-k outputs of such a model carry their tokens' texts.
 * With return_state a top-level "states" array beside "outputs" holds one
 * {"h": [[floats] x layers*directions], "c": [...]} per sequence, the shape that
 * "initial_state" takes. */
char *api_render_response(const api_request *r, const char *model_name,
                          const model_info *info, size_t *len);

/* What the client of a streaming request (r->stream) has been sent so far. Zero it
 * before the first event; api_stream_free frees it. */
typedef struct {
    int tokens;       /* generated tokens sent */
    char *text;       /* the generated text so far (models with a vocabulary) */
    size_t len, cap;
    size_t sent;      /* bytes of text sent */
} api_stream;

/* Appends to w one server-sent event ("data: {...}" and a blank line) with what the
 * request's one sequence generated since the last event: for POST /infer (v2 0)
 * {"tokens": [new ids], "text": "new text"}, for v2 generate_stream {"model_name",
 * "model_version", "text_output": new text, "tokens"}. Text that may be the start of a
 * stop string is held back until later tokens rule that out or the sequence ends. final:
 * the sequence has ended; the event then also carries "finish_reason" ("stop", "length"
 * or "cancelled"), the seed of a sampling request and, for /infer, "model", and the text ends
 * before the stop string. Without final and with no new token it appends nothing.
 * Called from one thread at a time per request. Returns 0, or -1 when out of memory. */
int api_stream_event(const api_request *r, const char *model_name, int v2, int final,
                     api_stream *st, jsonw *w);

/* The events of a streaming request whose generation is complete, as a client of the
 * server receives them (one per generated token, the last final): what `balsa run`
 * prints. A malloc'd string, NULL when out of memory. */
char *api_render_stream(const api_request *r, const char *model_name, size_t *len);

/* Appends the event that ends a stream which failed after its 200 went out:
 * data: {"error": msg}. */
void api_stream_error(const char *msg, jsonw *w);

void api_stream_free(api_stream *st);

/* Renders GET /models: each model's name, shape and serving settings. batching[i] holds
 * max_batch_size, max_queue_delay_us, queue_capacity, request_timeout_ms, max_sequences
 * (0 for a model that keeps none) and sequence_idle_ms of model i. */
char *api_render_models(const api_model *models, int nmodels, const int (*batching)[6],
                        size_t *len);

#endif
