/* libFuzzer target: the body of POST /v2/models/{m}/generate (api_parse_generate). The
 * first byte picks the model (fuzz_common.h: only "fortunes" has a vocabulary, so the
 * others must be refused with a message); the rest is the body. An accepted request must
 * generate without an engine error and render valid JSON. */
#include <stdint.h>

#include "fuzz_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_setup_models();
    if (size < 1)
        return 0;
    int model = data[0] % FZ_NMODELS;
    api_request r;
    char err[512] = "";
    int code = api_parse_generate((const char *)data + 1, size - 1, fz_api, model, &fz_limits,
                                  &r, err, sizeof err);
    if (code) {
        fz_check_refusal(code, err, &r, 0);
        return 0;
    }
    if (model != 2)
        fz_fail("a model without a vocabulary accepted text_input", fz_api[model].name);
    balsa_status st = fz_execute(&r);
    if (st != BALSA_OK)
        fz_fail("accepted by api_parse_generate, refused by the engine", balsa_status_str(st));
    size_t len = 0;
    fz_check_json_response(api_render_generate(&r, fz_api[model].name, &len), len, 0);
    api_request_free(&r);
    return 0;
}
