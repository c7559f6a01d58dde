/* Names of the status codes in status.h. */
#include "status.h"

const char *balsa_status_str(balsa_status s)
{
    switch (s) {
    case BALSA_OK: return "ok";
    case BALSA_ERR_INVALID: return "invalid argument";
    case BALSA_ERR_OOM: return "out of memory";
    case BALSA_ERR_IO: return "i/o error";
    case BALSA_ERR_FORMAT: return "malformed input";
    case BALSA_ERR_UNSUPPORTED: return "unsupported";
    case BALSA_ERR_DEVICE: return "device error";
    case BALSA_ERR_FULL: return "queue full";
    case BALSA_ERR_TIMEOUT: return "deadline exceeded";
    case BALSA_ERR_SHUTDOWN: return "shutting down";
    }
    return "unknown status";
}
