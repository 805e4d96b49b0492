/* stats: per-worker counters, written only by their worker's thread (no locks on the data
 * path), and their rendering. Never does I/O on its own. */
#ifndef UPROXY_STATS_H
#define UPROXY_STATS_H

#include <stdint.h>

#include "uproxy/loop.h"

enum close_reason {
	CLOSE_NORMAL = 0,     /* both directions finished with EOF */
	CLOSE_CLIENT_RESET,   /* the client reset or failed */
	CLOSE_UPSTREAM_RESET, /* the upstream reset or failed */
	CLOSE_CONNECT_FAILED, /* no upstream address accepted the connection */
	CLOSE_SHUTDOWN,	      /* uproxy is stopping */
	CLOSE_RESOURCE,	      /* no fd or memory for the upstream socket */
	CLOSE_TIMEOUT,	      /* --idle-timeout or --fin-timeout */
	CLOSE__COUNT
};

struct worker_stats {
	uint64_t accepted;
	uint64_t accept_errors;
	uint64_t accept_backoffs;   /* EMFILE/ENFILE/ENOMEM pauses */
	uint64_t accept_overflow;   /* accepted while stopping or beyond every free slot */
	uint64_t closed[CLOSE__COUNT];
	uint64_t bytes[2];	    /* [0] client->upstream, [1] upstream->client */
	uint64_t connect_attempts;
	uint64_t connect_errors;    /* failed attempts, including ones a later address saved */
	uint64_t buf_exhausted;	    /* recvs that found the buffer ring empty */
	uint64_t backpressure;	    /* recvs paused by the high-water mark */
	uint64_t stale_cqes;	    /* completions for a slot whose generation moved on */
};

const char *close_reason_name(enum close_reason r);

/* Logs one info line with every counter. */
void stats_log_summary(const struct worker_stats *st, const struct loop_stats *ls, int worker);

#endif
