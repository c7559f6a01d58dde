/* `balsa convert` (dense PyTorch weights -> pruned balsa model) and `balsa inspect`
 * (what a model file holds): thin command-line faces over models/convert.h and
 * models/model_file.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "models/convert.h"

static void convert_usage(FILE *f)
{
    fprintf(f,
            "usage: balsa convert IN.safetensors -o OUT.safetensors [options]\n"
            "  Prunes dense PyTorch-named weights (F32/F16/BF16 safetensors) to balanced\n"
            "  sparsity and writes a balsa model (models/FORMAT.md).\n"
            "  --desc FILE       network description JSON (default: the input's own\n"
            "                    \"balsa\" metadata, as models/tools/export.py writes it)\n"
            "  --sparsity S      fraction of each bank dropped, 0 <= S < 1 (default 0.9;\n"
            "                    0 keeps every matrix dense)\n"
            "  --bank B          bank width, %d..%d (default %d)\n"
            "  --dense NAME      keep this weight matrix dense (repeatable), e.g. fc.1.weight\n"
            "  --name NAME       the model's name (replaces the description's)\n"
            "  --head HEAD       none, softmax or log_softmax (replaces the description's)\n"
            "  --quiet           no progress lines on stderr\n",
            BSMAT_MIN_BANK, BSMAT_MAX_BANK, BSMAT_DEFAULT_BANK);
}

static char *read_text(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s", path);
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += got;
        if (n + 1 == cap) {
            char *nb = cap < (64u << 20) ? realloc(buf, cap * 2) : NULL;
            if (!nb) {
                free(buf);
                buf = NULL;
                snprintf(err, errlen, "%s: too large for a description", path);
            }
            buf = nb;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf)
        buf[n] = 0;
    return buf;
}

static void print_entry(const convert_entry *e)
{
    char shape[32];
    if (e->cols)
        snprintf(shape, sizeof shape, "%d x %d", e->rows, e->cols);
    else
        snprintf(shape, sizeof shape, "%d", e->rows);
    char lay[48];
    if (e->sparse)
        snprintf(lay, sizeof lay, "balanced %d/%d (%.1f%% sparse)", e->k, e->bank,
                 100.0 * (1.0 - (double)e->k / e->bank));
    else
        snprintf(lay, sizeof lay, "dense");
    printf("  %-28s %-14s %-30s %10zu bytes\n", e->name, shape, lay, e->bytes);
}

int convert_main(int argc, char **argv)
{
    const char *in = NULL, *out = NULL, *desc_path = NULL;
    const char **dense = calloc((size_t)argc, sizeof *dense);
    convert_opts o = {0.9, BSMAT_DEFAULT_BANK, NULL, 0, stderr, NULL, NULL};
    int rc = 2;
    if (!dense)
        return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has = i + 1 < argc;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            convert_usage(stdout);
            free(dense);
            return 0;
        } else if ((strcmp(a, "-o") == 0 || strcmp(a, "--out") == 0) && has) {
            out = argv[++i];
        } else if (strcmp(a, "--desc") == 0 && has) {
            desc_path = argv[++i];
        } else if (strcmp(a, "--sparsity") == 0 && has) {
            char *end;
            o.sparsity = strtod(argv[++i], &end);
            if (*end || !(o.sparsity >= 0 && o.sparsity < 1)) {
                fprintf(stderr, "balsa convert: --sparsity must be a number in [0, 1)\n");
                goto done;
            }
        } else if (strcmp(a, "--bank") == 0 && has) {
            char *end;
            long b = strtol(argv[++i], &end, 10);
            if (*end || b < BSMAT_MIN_BANK || b > BSMAT_MAX_BANK) {
                fprintf(stderr, "balsa convert: --bank must be an integer in %d..%d\n",
                        BSMAT_MIN_BANK, BSMAT_MAX_BANK);
                goto done;
            }
            o.bank = (int)b;
        } else if (strcmp(a, "--dense") == 0 && has) {
            dense[o.nkeep_dense++] = argv[++i];
        } else if (strcmp(a, "--name") == 0 && has) {
            o.name = argv[++i];
        } else if (strcmp(a, "--head") == 0 && has) {
            o.head = argv[++i];
        } else if (strcmp(a, "--quiet") == 0) {
            o.progress = NULL;
        } else if (a[0] != '-' && !in) {
            in = a;
        } else {
            fprintf(stderr, "balsa convert: unexpected argument \"%s\"\n", a);
            convert_usage(stderr);
            goto done;
        }
    }
    if (!in || !out) {
        convert_usage(stderr);
        goto done;
    }
    o.keep_dense = dense;
    char err[512];
    char *desc = NULL;
    if (desc_path && !(desc = read_text(desc_path, err, sizeof err))) {
        fprintf(stderr, "balsa convert: %s\n", err);
        rc = 1;
        goto done;
    }
    convert_entry rep[MODEL_MAX_TENSORS];
    int nrep = 0;
    balsa_status st = model_convert(in, desc, &o, out, rep, &nrep, err, sizeof err);
    free(desc);
    if (st != BALSA_OK) {
        fprintf(stderr, "balsa convert: %s\n", err);
        rc = 1;
        goto done;
    }
    size_t stored = 0, dense_bytes = 0;
    printf("wrote %s:\n", out);
    for (int i = 0; i < nrep; i++) {
        print_entry(&rep[i]);
        stored += rep[i].bytes;
        dense_bytes += (size_t)rep[i].rows * (rep[i].cols ? rep[i].cols : 1) * sizeof(float);
    }
    printf("  total %zu bytes stored, %zu bytes dense (%.2fx smaller)\n", stored, dense_bytes,
           stored ? (double)dense_bytes / stored : 0.0);
    rc = 0;
done:
    free(dense);
    return rc;
}

int inspect_main(int argc, char **argv)
{
    if (argc != 2 || argv[1][0] == '-') {
        FILE *f = argc == 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr;
        fprintf(f, "usage: balsa inspect MODEL.safetensors\n"
                   "  Checks a balsa model file and prints its network, its sparsity per\n"
                   "  matrix and its memory.\n");
        return f == stdout ? 0 : 2;
    }
    model_spec s;
    model_host h;
    model_layout lay[MODEL_MAX_TENSORS];
    char err[512];
    if (model_file_read(argv[1], &s, &h, lay, err, sizeof err) != BALSA_OK) {
        fprintf(stderr, "balsa inspect: %s: %s\n", argv[1], err);
        return 1;
    }
    struct stat sb;
    long long fsize = stat(argv[1], &sb) == 0 ? (long long)sb.st_size : -1;
    printf("model     %s  (%s, %lld bytes)\n", s.name[0] ? s.name : "(unnamed)", argv[1],
           fsize);
    if (s.input_kind == MODEL_INPUT_TOKENS)
        printf("input     tokens, vocabulary %d, embedding %d\n", s.vocab_size, s.input_size);
    else
        printf("input     vectors of %d features\n", s.input_size);
    if (h.vocab.n) {
        /* The first tokens' texts, with control characters escaped, to show what they are. */
        printf("text      vocabulary in the file:");
        for (int i = 0; i < h.vocab.n && i < 12; i++) {
            putchar(' ');
            putchar('"');
            for (const unsigned char *p = (const unsigned char *)h.vocab.tok[i]; *p; p++)
                if (*p == '\n')
                    fputs("\\n", stdout);
                else if (*p < 0x20 || *p == '"' || *p == '\\')
                    printf("\\x%02x", *p);
                else
                    putchar(*p);
            putchar('"');
        }
        printf("%s\n", h.vocab.n > 12 ? " ..." : "");
    }
    if (s.hidden_size > 0)
        printf("lstm      %d layer%s, hidden %d%s%s\n", s.num_layers, s.num_layers > 1 ? "s" : "",
               s.hidden_size, s.bidirectional ? ", bidirectional" : "",
               s.lstm_bias ? "" : ", no bias");
    size_t fold = model_fold_table_bytes(&s);
    if (fold > 0 && fold <= MODEL_FOLD_MAX_BYTES)
        printf("fold      embedding folded into lstm layer 0 at load: %zu-byte table (%d "
               "tokens x %d gates%s)\n",
               fold, s.vocab_size, 4 * s.hidden_size, s.bidirectional ? " x 2 directions" : "");
    else if (fold > 0)
        printf("fold      embedding not folded: its table would be %zu bytes, over the %zu-byte "
               "cap\n",
               fold, MODEL_FOLD_MAX_BYTES);
    for (int l = 1; l < s.num_layers; l++)
        if (model_layer_joins(&s, &h, l))
            printf("join      lstm layer %d: W_ih and W_hh joined at load on the CPU backend, "
                   "one product per step: %zu more bytes\n",
                   l, bsmat_bytes(&h.w_ih[l][0].sp) + bsmat_bytes(&h.w_hh[l][0].sp));
    for (int i = 0; i < s.n_fc; i++)
        printf("fc.%-6d %d outputs, %s%s\n", i, s.fc[i].out, balsa_act_str(s.fc[i].act),
               s.fc[i].bias ? "" : ", no bias");
    printf("head      %s (output %d floats)\n", model_head_str(s.head),
           model_spec_output_size(&s));
    printf("tensors:\n");
    model_tensor_ref refs[MODEL_MAX_TENSORS];
    int n = model_tensor_list(&s, refs);
    long long pd = 0, ps = 0, spd = 0, spk = 0;
    size_t bytes = 0;
    for (int i = 0; i < n; i++) {
        convert_entry e = {.rows = refs[i].rows, .cols = refs[i].cols};
        memcpy(e.name, refs[i].name, sizeof e.name);
        long long cnt = (long long)refs[i].rows * (refs[i].cols ? refs[i].cols : 1);
        model_host_mat *hm = model_host_mat_slot(&h, &refs[i]);
        pd += cnt;
        if (hm && hm->sparse) {
            e.sparse = 1;
            e.bank = hm->sp.bank;
            e.k = hm->sp.k;
            e.bytes = bsmat_bytes(&hm->sp);
            long long kept = (long long)hm->sp.rows * hm->sp.nbanks * hm->sp.k;
            ps += kept;
            spk += kept;
            spd += (long long)hm->sp.rows * hm->sp.nbanks * hm->sp.bank;
        } else {
            e.bytes = (size_t)cnt * sizeof(float);
            ps += cnt;
        }
        bytes += e.bytes;
        print_entry(&e);
    }
    printf("weights   %lld dense, %lld stored (%.1f%% of dense); sparse matrices %.1f%% "
           "sparse\n",
           pd, ps, pd ? 100.0 * ps / pd : 0.0, spd ? 100.0 * (1.0 - (double)spk / spd) : 0.0);
    printf("memory    %zu bytes of weights (canonical layout), %lld bytes dense\n", bytes,
           pd * 4);
    model_host_free(&h);
    return 0;
}
