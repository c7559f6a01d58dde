/* The converter: dense PyTorch-named weights (a safetensors file as
 * safetensors.torch.save_file or models/tools/export.py writes it; F32, F16 or BF16) plus
 * a network description in, a balsa model file out, with the chosen weight matrices
 * pruned to balanced sparsity (k largest |w| per bank, ties to the lower column). */
#ifndef BALSA_MODELS_CONVERT_H
#define BALSA_MODELS_CONVERT_H

#include <stdio.h>

#include "model_file.h"

typedef struct {
    double sparsity;              /* fraction dropped per bank; 0 keeps every matrix dense */
    int bank;                     /* bank width, BSMAT_MIN_BANK..BSMAT_MAX_BANK */
    const char *const *keep_dense; /* names of matrices to keep dense */
    int nkeep_dense;
    FILE *progress;               /* one line per matrix while converting, or NULL */
    const char *name;             /* replaces the description's name, when not NULL */
    const char *head;             /* replaces its head (none/softmax/log_softmax), or NULL */
} convert_opts;

/* What the converter did with one tensor, for the summary. */
typedef struct {
    char name[48];
    int rows, cols; /* cols 0: a vector (bias) */
    int sparse, bank, k;
    size_t bytes;   /* stored bytes */
} convert_entry;

/* Converts in_path to out_path. The description comes from desc_json when not NULL,
 * else from the input's own __metadata__ "balsa" entry (models/tools/export.py writes
 * it there). Every tensor the description needs must be in the input; extra ones are
 * named in the progress output and skipped. report (room for MODEL_MAX_TENSORS, may be
 * NULL) and *nreport get one entry per tensor written. Returns BALSA_ERR_IO /
 * BALSA_ERR_FORMAT / BALSA_ERR_INVALID with a message naming the problem. */
balsa_status model_convert(const char *in_path, const char *desc_json, const convert_opts *o,
                           const char *out_path, convert_entry *report, int *nreport,
                           char *err, size_t errlen);

#endif
