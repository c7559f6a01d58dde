/* Embeds server/openapi.json (the OpenAPI 3 document of the HTTP API, served at
 * GET /openapi.json) into the binary at build time with the assembler's .incbin, so the
 * document in the repository is the one served and no generator step is needed. The
 * Makefile makes this object depend on the JSON file; the path is relative to the
 * repository root, where make runs the compiler. */
__asm__(".section .rodata\n"
        ".global balsa_openapi_json\n"
        ".global balsa_openapi_json_end\n"
        "balsa_openapi_json:\n"
        ".incbin \"server/openapi.json\"\n"
        "balsa_openapi_json_end:\n"
        ".byte 0\n"
        ".previous\n");
