/* The balsa model file (models/FORMAT.md): a safetensors file whose tensors carry
 * PyTorch's names and whose __metadata__ key "balsa" holds the network description as
 * JSON. This module turns such a file into a checked model_spec + model_host (and back),
 * and parses the same description JSON for `balsa convert --desc`. model_load (in
 * engine.h) is implemented here on top of model_file_read and model_build. */
#ifndef BALSA_MODELS_MODEL_FILE_H
#define BALSA_MODELS_MODEL_FILE_H

#include "engine/model.h"

#define MODEL_FORMAT_VERSION 1
#define MODEL_META_KEY "balsa"

/* How one weight matrix is stored. */
typedef struct {
    int sparse; /* 1: balanced (<name>.values + <name>.offsets); 0: dense F32 */
    int bank, k;
} model_layout;

/* Parses a description (FORMAT.md) from json[0..len). With need_layouts, the
 * "matrices" object must give every weight matrix's layout (model files); without it the
 * object may be missing (converter input) and layouts are left dense. layouts may be
 * NULL; otherwise it has room for MODEL_MAX_TENSORS, indexed like model_tensor_list.
 * vocab, when not NULL (and empty), receives the "vocabulary" if there is one (the caller
 * frees it with model_vocab_free, also after a failure). Returns BALSA_ERR_FORMAT naming
 * the field on any problem. */
balsa_status model_desc_parse(const char *json, size_t len, int need_layouts, model_spec *s,
                              model_layout *layouts, model_vocab *vocab, char *err,
                              size_t errlen);

/* The description of s with the given layouts (indexed like model_tensor_list) and
 * vocabulary (NULL or empty: none), as a malloc'd JSON string; NULL when out of memory. */
char *model_desc_print(const model_spec *s, const model_layout *layouts,
                       const model_vocab *vocab);

/* Reads and checks a model file: every tensor the description needs present with the
 * right dtype and shape, no unknown tensor, balanced matrices valid (bsmat_validate),
 * every value finite. Fills s, h (caller frees with model_host_free) and, when not NULL,
 * layouts. On failure returns BALSA_ERR_IO or BALSA_ERR_FORMAT with a message naming the
 * tensor and the problem, and leaves h empty. */
balsa_status model_file_read(const char *path, model_spec *s, model_host *h,
                             model_layout *layouts, char *err, size_t errlen);

/* Writes s and h as a model file (each matrix sparse or dense as h holds it). Returns
 * BALSA_ERR_IO / BALSA_ERR_FORMAT (h does not match s) with a message. */
balsa_status model_file_write(const char *path, const model_spec *s, const model_host *h,
                              char *err, size_t errlen);

#endif
