/* Status codes shared by kernels/, engine/ and models/: what can fail at run time
 * returns one of these instead of exiting, and balsa_status_str() names it. */
#ifndef BALSA_STATUS_H
#define BALSA_STATUS_H

#include <stdio.h>
#include <stdlib.h>

typedef enum {
    BALSA_OK = 0,
    BALSA_ERR_INVALID,     /* an argument or input broke a documented rule */
    BALSA_ERR_OOM,         /* an allocation failed */
    BALSA_ERR_IO,          /* a file could not be opened, read or written */
    BALSA_ERR_FORMAT,      /* a file or matrix from outside is malformed */
    BALSA_ERR_UNSUPPORTED, /* valid, but this backend or build cannot do it */
    BALSA_ERR_DEVICE,      /* the accelerator failed; the backend is unhealthy */
    BALSA_ERR_FULL,        /* a bounded queue is full */
    BALSA_ERR_TIMEOUT,     /* a deadline passed */
    BALSA_ERR_SHUTDOWN     /* the component is draining or stopped */
} balsa_status;

/* Returns a static, human-readable name for s ("ok", "invalid argument", ...). */
const char *balsa_status_str(balsa_status s);

/* Always-on invariant check: a false condition is a bug, so print it and abort. */
#define BALSA_ASSERT(cond)                                                          \
    do {                                                                            \
        if (!(cond)) {                                                              \
            fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__,   \
                    #cond);                                                         \
            abort();                                                                \
        }                                                                           \
    } while (0)

#endif
