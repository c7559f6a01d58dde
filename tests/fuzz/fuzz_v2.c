/* libFuzzer target: the KServe v2 inference body (v2_parse_infer), JSON tensors and the
 * binary tensor extension. Input layout: byte 0 picks the model (fuzz_common.h), bytes
 * 1-2 are the Inference-Header-Content-Length as a little-endian uint16 (0xffff: the header
 * is absent, -1), the rest is the body. A refusal must carry 400/503 and a message; an
 * accepted request must run on the engine without an error and render a response whose
 * JSON part parses and whose binary part has the size the JSON announces. */
#include <cJSON.h>
#include <stdint.h>

#include "fuzz_common.h"
#include "server/v2_tensor.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_setup_models();
    if (size < 3)
        return 0;
    int model = data[0] % FZ_NMODELS;
    unsigned hl = (unsigned)data[1] | (unsigned)data[2] << 8;
    long header_len = hl == 0xffff ? -1 : (long)hl;
    api_request r;
    v2_request v;
    char err[512] = "";
    int code = v2_parse_infer((const char *)data + 3, size - 3, header_len, fz_api, model,
                              &fz_limits, &r, &v, err, sizeof err);
    if (code) {
        fz_check_refusal(code, err, &r, 0);
        return 0;
    }
    balsa_status st = fz_execute(&r);
    if (st != BALSA_OK)
        fz_fail("accepted by v2_parse_infer, refused by the engine", balsa_status_str(st));
    size_t len = 0, jlen = 0;
    const api_model *am = &fz_api[model];
    char *resp = v2_render_infer(&r, &v, am->name, am->info, &len, &jlen);
    if (!resp)
        fz_fail("render", "out of memory");
    cJSON *j = cJSON_ParseWithLength(resp, jlen);
    if (!j)
        fz_fail("response JSON does not parse", resp);
    double bin = 0;
    const cJSON *o;
    cJSON_ArrayForEach(o, cJSON_GetObjectItem(j, "outputs"))
    {
        const cJSON *p = cJSON_GetObjectItem(o, "parameters");
        const cJSON *b = p ? cJSON_GetObjectItem(p, "binary_data_size") : NULL;
        if (b)
            bin += b->valuedouble;
    }
    if (bin != (double)(len - jlen))
        fz_fail("binary part differs from the sizes the JSON announces", resp);
    cJSON_Delete(j);
    free(resp);
    api_request_free(&r);
    return 0;
}
