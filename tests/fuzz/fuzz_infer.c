/* libFuzzer target: the POST /infer body (api_parse_request) against the three test
 * models of fuzz_common.h. A refusal must carry a 4xx/503 code and a message; an accepted
 * request must run on the engine (model_run / model_generate) without an error and render
 * a response that is valid JSON. */
#include <stdint.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_setup_models();
    api_request r;
    char err[512] = "";
    int code = api_parse_request((const char *)data, size, fz_api, FZ_NMODELS, &fz_limits, &r,
                                 err, sizeof err);
    if (code) {
        fz_check_refusal(code, err, &r, 1);
        return 0;
    }
    balsa_status st = fz_execute(&r);
    if (st != BALSA_OK)
        fz_fail("accepted by api_parse_request, refused by the engine", balsa_status_str(st));
    const api_model *am = &fz_api[r.model];
    size_t len = 0;
    char *resp = r.stream ? api_render_stream(&r, am->name, &len)
                          : api_render_response(&r, am->name, am->info, &len);
    fz_check_json_response(resp, len, r.stream);
    api_request_free(&r);
    return 0;
}
