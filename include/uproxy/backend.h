/* backend: the upstream pool. Which upstream a new session goes to (four balancing policies),
 * passive and active health, backup upstreams, and how many sessions each upstream carries.
 * Pure logic driven by the caller's clock: never does I/O, never allocates on a pick. */
#ifndef UPROXY_BACKEND_H
#define UPROXY_BACKEND_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "uproxy/addr.h"

/* Most slots in one pool: members plus removed backends still draining sessions. Every id is
 * below it. Far above any upstream list a config file or a DNS answer gives, and small enough
 * that the O(N) scan each policy does per pick stays in the microseconds (see backend.c). */
#define BACKEND_MAX 1024

/* Weights are 1..256, as in HAProxy; 0 in a spec means the default. */
#define BACKEND_WEIGHT_MAX     256
#define BACKEND_WEIGHT_DEFAULT 1

/* Three connect failures in a row mark a backend down (HAProxy's `fall` default): one lost SYN
 * or one RST during an upstream restart is not enough, three consecutive ones are. */
#define BACKEND_FAIL_THRESHOLD_DEFAULT 3

/* A backend marked down by failures is retried ("half-open") after 10 s, nginx's
 * fail_timeout default: long enough not to hammer a dead host, short enough to notice a restart. */
#define BACKEND_FAIL_TIMEOUT_MS_DEFAULT 10000

enum backend_balance {
	BALANCE_ROUNDROBIN = 0, /* smooth weighted round robin (nginx) */
	BALANCE_LEASTCONN,	/* fewest active sessions per unit of weight */
	BALANCE_RANDOM2,	/* power of two weighted random choices */
	BALANCE_HASH,		/* consistent hash of the client IP (weighted rendezvous) */
	BALANCE__COUNT
};

/* Parses "roundrobin", "leastconn", "random2" or "hash". Returns 0 or -EINVAL. */
int backend_balance_parse(const char *s, enum backend_balance *out);
/* The name backend_balance_parse accepts; "?" for a value out of range. */
const char *backend_balance_name(enum backend_balance b);

struct backend_opts {
	enum backend_balance balance;
	uint32_t fail_threshold;  /* consecutive connect failures that mark a backend down, >= 1 */
	uint32_t fail_timeout_ms; /* how long it stays down before it is tried again */
	uint64_t seed;		  /* PRNG seed for random2; any value, deterministic per seed */
};

/* One member of the pool as a config file or a DNS answer describes it. */
struct backend_spec {
	struct addr addr; /* AF_INET or AF_INET6 with its port, or a named AF_UNIX socket */
	uint32_t weight;  /* 1..BACKEND_WEIGHT_MAX, 0 = BACKEND_WEIGHT_DEFAULT */
	bool backup;	  /* ",backup": picked only while every primary is down */
};

/* What the pool knows about one backend, for metrics and logs. */
struct backend_info {
	struct addr addr;
	uint32_t weight;
	uint32_t active;     /* sessions between backend_acquire and backend_release */
	uint32_t fails;	     /* consecutive failures reported */
	uint64_t picks;	     /* times backend_pick returned it */
	uint64_t down_until; /* when down: the now_ms at which it turns half-open */
	bool up;	     /* false once marked down, until a success or backend_set_up */
	bool removed;	     /* no longer a member; kept while sessions still use it */
	bool backup;	     /* a backup upstream (struct backend_spec) */
};

struct backend_pool;

/* Fills o with the defaults: roundrobin, the two constants above, seed 1. */
void backend_opts_defaults(struct backend_opts *o);

/* Creates an empty pool. Returns 0, -EINVAL for bad options, or -ENOMEM. */
int backend_pool_new(const struct backend_opts *o, struct backend_pool **out);
void backend_pool_free(struct backend_pool *p);

/* Replaces the membership with specs[0..n). A backend whose address (IP, port, IPv6 scope) is
 * in both keeps its id, counters and health and takes the new weight and backup flag (a primary
 * that becomes a backup, or back, is the same upstream); a new address gets a
 * free id; a backend missing from specs is flagged removed, never picked again, and its id is
 * freed once no session holds it (at once if none does). A removed backend that reappears while
 * still draining is a member again, under its old id.
 * All or nothing: returns 0, or -EINVAL (weight out of range, family not IPv4/IPv6/unix, an
 * unnamed unix address, the same address twice), -ENOSPC (more than BACKEND_MAX slots would be in
 * use), -ENOMEM, leaving the pool as it was. */
int backend_pool_update(struct backend_pool *p, const struct backend_spec *specs, int n);

/* Chooses a backend for a new session: returns its id, or -1 when every member is removed or
 * in tried_ids. client (may be NULL) is only read by BALANCE_HASH, which falls back to round
 * robin without one or for a family other than IPv4/IPv6. tried_ids[0..ntried) are backends
 * this session already failed on; they are skipped so a retry goes to the next upstream.
 * Backends marked down are skipped too, unless every untried member is down: then the one
 * whose down period ends soonest is returned anyway, because trying a probably-dead upstream
 * costs one connect attempt while refusing the client costs the session for certain.
 *
 * Backups: the policy chooses among the primaries (members without the backup flag) that are
 * untried and up or half-open; only when there is none does it choose, the same way, among
 * the backups (so a hash client keeps its backup while the primaries stay down). Hence a
 * retry whose every primary is already tried goes to a backup, as in nginx: refusing a client
 * while a backup is idle serves no one. When every untried member is down, the fallback above
 * takes the untried primary that comes back soonest, and a backup only when no primary is
 * left untried. A pool whose members are all backups is served by them.
 * Call backend_acquire right after, so leastconn and random2 see the session at once. */
int backend_pick(struct backend_pool *p, const struct sockaddr *client, uint64_t now_ms,
		 const uint32_t *tried_ids, int ntried);

/* One more / one fewer session on id. backend_release of the last session of a removed
 * backend frees its id. Return 0, or -ENOENT for an id not in use (and release with no
 * session active). */
int backend_acquire(struct backend_pool *p, uint32_t id);
int backend_release(struct backend_pool *p, uint32_t id);

/* Passive health: the outcome of one connect to id. fail_threshold failures in a row mark it
 * down until now_ms + fail_timeout_ms; after that it is eligible again (half-open) and a
 * failure marks it down again at once, for another fail_timeout_ms. A failure inside the down
 * period (a connect begun earlier) does not extend it. A success, at any time, marks it up and
 * clears the count. Returns true only when up/down changed (to log it): half-open failing
 * again is still down. Unknown ids are ignored. */
bool backend_report(struct backend_pool *p, uint32_t id, bool ok, uint64_t now_ms);

/* Active health: an external check's verdict. Down stays down (never half-open) until a later
 * backend_set_up(true) or a reported success. Returns true when the up/down state changed. */
bool backend_set_up(struct backend_pool *p, uint32_t id, bool up);

/* True while the traffic is on the backups: the pool has a backup member and no primary member
 * is up (every one is marked down, by passive or active health, or there is none), whether or
 * not a backup is up (if none is, picks fall back as backend_pick says). Half-open
 * does not count as up: a primary's probe connect changes nothing until it succeeds (then
 * backend_report returns true and this turns false), so the state does not flap every
 * fail_timeout. It changes only in backend_report, backend_set_up and backend_pool_update. */
bool backend_pool_using_backup(const struct backend_pool *p);

/* For logging the change once: +1 when backend_pool_using_backup turned true since the last
 * call (traffic moved to the backups), -1 when it turned false (back to the primaries), 0 when
 * it is as it was at the last call (the first call compares with false). */
int backend_pool_backup_changed(struct backend_pool *p);

/* Iteration: ids run from 0 to backend_slots() - 1; backend_info returns -ENOENT for a free
 * one. backend_count is the number of members (not removed). */
uint32_t backend_slots(const struct backend_pool *p);
uint32_t backend_count(const struct backend_pool *p);
int backend_info(const struct backend_pool *p, uint32_t id, struct backend_info *out);
enum backend_balance backend_pool_balance(const struct backend_pool *p);

#endif
