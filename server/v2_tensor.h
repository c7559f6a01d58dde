/* The KServe v2 tensor codec: an inference request of v2 tensors (JSON "data", or the
 * binary tensor extension: a JSON header of Inference-Header-Content-Length bytes followed
 * by raw little-endian tensor bytes) becomes the same api_request POST /infer builds, and
 * a finished request becomes a v2 response (JSON numbers, or raw bytes after the JSON).
 *
 * How balsa's variable-length sequences map to v2 tensors (docs in server/openapi.json):
 *   inputs   tokens   INT32 or INT64 [batch, steps]              token models
 *            features FP32 [batch, steps, input_size]            vector models
 *            lengths  INT32 or INT64 [batch, 1] (or [batch])     optional; sequence i is
 *                     the first lengths[i] steps of row i (1 <= lengths[i] <= steps); without
 *                     it every sequence is `steps` long
 *            text     BYTES [batch] (or [batch, 1])              token models with a
 *                     vocabulary, in place of tokens and lengths: each string is split into
 *                     tokens (longest match) and is one sequence; in the binary form each
 *                     element is a 4-byte little-endian length and its bytes (Triton's)
 *   params   output "last" (default) | "all"; top_k (integer); timeout_ms (integer), or
 *            Triton's timeout (integer microseconds, rounded up to milliseconds);
 *            binary_data_output (bool: every output as raw bytes); Triton's sequence_id,
 *            sequence_start, sequence_end (api_parse_sequence); others are ignored
 *   outputs  output        FP32  [batch, output_size] ("last") or
 *                                [batch, steps, output_size] ("all"; rows past a sequence's
 *                                length are zero)
 *            top_k_indices INT32 [batch, k] or [batch, steps, k] (padding rows -1)
 *            top_k_values  FP32  the same shape (padding rows 0)
 *   Without "outputs" the response holds `output`, and both top_k tensors when top_k is
 *   given; a top_k tensor asked for without the top_k parameter uses k = 1. */
#ifndef BALSA_V2_TENSOR_H
#define BALSA_V2_TENSOR_H

#include <stddef.h>

#include "api.h"

typedef enum { V2_OUT_OUTPUT = 0, V2_OUT_TOPK_INDICES, V2_OUT_TOPK_VALUES, V2_NOUTS } v2_output;

/* What a v2 request adds to its api_request. */
typedef struct {
    char id[128];            /* the request's "id", echoed in the response */
    int has_id;
    int order[V2_NOUTS];     /* the outputs to answer, in this order */
    int nout;
    int binary[V2_NOUTS];    /* 1: that output goes as raw bytes after the JSON */
    int batch, steps;        /* the input tensor's first two dimensions */
} v2_request;

/* Parses an inference request for models[model] from body[0..len). header_len is the
 * Inference-Header-Content-Length value (the JSON part's length; the rest of the body is
 * the binary tensor data), or -1 when the header was absent. Returns 0 and fills r (free
 * with api_request_free; r->model = model) and v, or an HTTP status with a message in err
 * and r left empty: 400 for any broken rule, 503 when the model is still loading. */
int v2_parse_infer(const char *body, size_t len, long header_len, const api_model *models,
                   int model, const api_limits *lim, api_request *r, v2_request *v, char *err,
                   size_t errlen);

/* Renders the response of a finished request (r's outputs filled): the JSON, then the raw
 * bytes of every binary output in order. Returns a malloc'd buffer (free()) with its
 * length in *len and the JSON part's length in *json_len (== *len when no output is
 * binary); NULL when out of memory. */
char *v2_render_infer(const api_request *r, const v2_request *v, const char *model_name,
                      const model_info *info, size_t *len, size_t *json_len);

#endif
