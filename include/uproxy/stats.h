/* stats: per-worker counters, written only by their worker's thread (no locks on the data
 * path), published as seqlock snapshots for the metrics endpoint, and rendered in the
 * Prometheus text format. Never does I/O on its own. */
#ifndef UPROXY_STATS_H
#define UPROXY_STATS_H

#include <stddef.h>
#include <stdint.h>

#include "uproxy/addr.h"
#include "uproxy/backend.h"
#include "uproxy/loop.h"

enum close_reason {
	CLOSE_NORMAL = 0,     /* both directions finished with EOF */
	CLOSE_CLIENT_RESET,   /* the client reset or failed */
	CLOSE_UPSTREAM_RESET, /* the upstream reset or failed */
	CLOSE_CONNECT_FAILED, /* no upstream address accepted the connection */
	CLOSE_SHUTDOWN,	      /* uproxy is stopping */
	CLOSE_RESOURCE,	      /* no fd or memory for the upstream socket */
	CLOSE_TIMEOUT,	      /* --idle-timeout or --fin-timeout */
	CLOSE_PROTOCOL,	      /* a missing or malformed PROXY header or TLS ClientHello */
	CLOSE_DENIED,	      /* the listener's access list refused the client */
	CLOSE_LIMITED,	      /* a per-client limit refused the client */
	CLOSE__COUNT
};

/* Upstream connect latency histogram bounds, in microseconds: loopback connects take tens of
 * microseconds, a remote data centre milliseconds, a struggling upstream seconds. */
#define STATS_CONNECT_BUCKETS 12
extern const uint32_t stats_connect_bounds_us[STATS_CONNECT_BUCKETS];

struct worker_stats {
	uint64_t accepted;
	uint64_t accept_errors;
	uint64_t accept_backoffs; /* EMFILE/ENFILE/ENOMEM pauses */
	uint64_t accept_overflow; /* accepted while stopping or beyond every free slot */
	uint64_t closed[CLOSE__COUNT];
	uint64_t bytes[2]; /* [0] client->upstream, [1] upstream->client */
	uint64_t connect_attempts;
	uint64_t connect_errors; /* failed attempts, including ones a later address saved */
	uint64_t connect_hist[STATS_CONNECT_BUCKETS + 1]; /* successful connects, +Inf last */
	uint64_t connect_sum_us;
	uint64_t buf_exhausted;	 /* recvs that found the buffer ring empty */
	uint64_t fallback_recvs; /* recvs into a fallback buffer (the pool was low) */
	uint64_t
		truncated[2]; /* sides reset because bytes for them were lost: [client, upstream] */
	uint64_t backpressure; /* recvs paused by the high-water mark */
	uint64_t stale_cqes;   /* completions for a slot whose generation moved on */
	uint64_t log_dropped;  /* access-log lines dropped because the log could not keep up */
};

/* Per-listener counters (the metrics' `listener` label). */
struct listener_stats {
	uint64_t accepted;
	uint64_t closed[CLOSE__COUNT];
	uint64_t bytes[2];
	uint64_t truncated[2];
	uint64_t denied;     /* refused by the access list */
	uint64_t limited[3]; /* refused by a per-client limit: [conns, rate, table] */
	uint64_t sni_routed; /* pool chosen from a ClientHello's server name */
	uint64_t overflow;   /* accepted while stopping or beyond every free slot */
};

/* Adds one successful connect that took us microseconds. */
void stats_connect_observe(struct worker_stats *st, uint64_t us);

const char *close_reason_name(enum close_reason r);

/* Logs one info line with every counter. */
void stats_log_summary(const struct worker_stats *st, const struct loop_stats *ls, int worker);

/* What one worker knows of one upstream. */
struct stats_backend {
	struct addr addr;
	uint32_t active;
	uint8_t up;
	uint8_t backup;
	uint16_t pool; /* index into stats_snapshot.pools */
};

/* Names are [A-Za-z0-9_.-]{1,32} (config.h: CONFIG_NAME_MAX). */
#define STATS_NAME_MAX	    33
#define STATS_MAX_LISTENERS 32
#define STATS_MAX_POOLS	    64

struct stats_listener {
	char name[STATS_NAME_MAX];
	uint32_t active;
	struct listener_stats st;
};

struct stats_pool {
	char name[STATS_NAME_MAX];
	uint8_t on_backup;
};

/* A worker's published view, read by the thread serving /metrics. */
struct stats_snapshot {
	uint32_t seq; /* odd while being written */
	uint32_t active;
	struct worker_stats st;
	struct loop_stats ls;
	uint32_t nbackends;
	struct stats_backend backends[BACKEND_MAX];
	uint32_t nlisteners;
	struct stats_listener listeners[STATS_MAX_LISTENERS];
	uint32_t npools;
	struct stats_pool pools[STATS_MAX_POOLS];
};

/* Process-wide counters kept by the control thread (SIGHUP reloads: [0] ok, [1] failed). */
extern uint64_t stats_reloads[2];

/* Writer side (the owning worker): copies the figures under the seqlock. backends may be
 * NULL to keep the published backend and pool tables as they are. */
void stats_publish(struct stats_snapshot *snap, uint32_t active, const struct worker_stats *st,
		   const struct loop_stats *ls, const struct stats_backend *backends, uint32_t nb,
		   const struct stats_listener *listeners, uint32_t nl,
		   const struct stats_pool *pools, uint32_t np);

/* Reader side (any thread): a consistent copy. */
void stats_read(const struct stats_snapshot *snap, struct stats_snapshot *out);

/* Renders the sum of n snapshots in the Prometheus text format (v0.0.4). Returns the length
 * written (always NUL-terminated), or the length needed if it did not fit. */
size_t stats_render(char *buf, size_t len, const struct stats_snapshot *snaps, int n);

#endif
