/* libFuzzer target: the server's JSON config file (config_load_text over the defaults,
 * then config_finish as `balsa serve` does). A refusal of the file must name the file in
 * its message, one of the finished configuration (whose values may come from any layer)
 * the key at fault; an accepted file must leave every model with a valid name and a path. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    config c;
    char err[512] = "";
    config_defaults(&c);
    if (config_load_text(&c, (const char *)data, size, "fuzz.json", err, sizeof err) != 0) {
        if (strncmp(err, "fuzz.json", 9) != 0) {
            fprintf(stderr, "FUZZ FINDING: config refusal without the file named: %s\n", err);
            abort();
        }
        return 0;
    }
    if (config_finish(&c, err, sizeof err) != 0) {
        if (strncmp(err, "models:", 7) != 0 && strncmp(err, "tls_cert:", 9) != 0 &&
            strncmp(err, "tls_key:", 8) != 0) {
            fprintf(stderr, "FUZZ FINDING: config refusal without the key named: %s\n", err);
            abort();
        }
        return 0;
    }
    if (c.nmodels < 1 || c.nmodels > CONFIG_MAX_MODELS)
        abort();
    for (int i = 0; i < c.nmodels; i++)
        if (!c.models[i].name[0] || !c.models[i].path[0] ||
            memchr(c.models[i].name, 0, CONFIG_NAME_MAX) == NULL ||
            memchr(c.models[i].path, 0, CONFIG_PATH_MAX) == NULL) {
            fprintf(stderr, "FUZZ FINDING: config accepted model %d without a name or path\n", i);
            abort();
        }
    return 0;
}
