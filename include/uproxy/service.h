/* service: what one worker runs for each configured listener (a "svc": its sockets, settings,
 * client table, access log and counters) and for each upstream pool (a "upool": the balancer,
 * the addresses and the health probes). Sessions name their svc and upool by index; both are
 * stable slots, kept while any session still uses them, so SIGHUP can add, change and remove
 * listeners and pools without touching the sessions of the others. Plain data: the logic is in
 * worker.c (apply), session.c and health.c. */
#ifndef UPROXY_SERVICE_H
#define UPROXY_SERVICE_H

#include <stdbool.h>
#include <stdint.h>

#include "uproxy/backend.h"
#include "uproxy/config.h"
#include "uproxy/listener.h"
#include "uproxy/log.h"
#include "uproxy/stats.h"
#include "uproxy/timer.h"

/* Listener slots per worker: the configured ones plus removed ones still draining. */
#define SVC_MAX 32
/* Sockets of one listener in one worker (":PORT" opens an IPv4 and an IPv6 one). */
#define SVC_MAX_SOCKS 4
/* Pool slots per worker: the configured ones plus replaced ones still used by sessions. */
#define UPOOL_MAX  64
#define UPOOL_NONE UINT16_MAX

/* Active health probe of one backend id. */
struct probe {
	int fd;
	bool busy;
};

struct upool {
	struct config_pool cfg;
	struct backend_pool *bp;
	struct addr *baddr; /* per backend id: its address, stable while the id is held */
	uint32_t *bgen;	    /* per backend id: bumped when the id names a new address */
	struct probe *probes;
	uint32_t refs; /* listeners routing to it + sessions holding it + probes in flight */
	bool used;     /* the slot is taken */
	bool retired;  /* no longer configured: freed once refs reaches 0 */
	struct timer_node health; /* --health-interval */
};

struct climit;
struct accesslog;

struct svc {
	struct config_listener cfg;
	struct listener socks[SVC_MAX_SOCKS];
	int nsocks;
	uint16_t pool;				    /* default pool (upool index) or UPOOL_NONE */
	uint16_t route_pool[CONFIG_MAX_SNI_ROUTES]; /* per cfg.sni_routes[i] */
	struct climit *climit;			    /* per-client limits, or NULL */
	struct accesslog *alog;			    /* or NULL */
	uint32_t sessions;			    /* sessions started on it and not released */
	uint32_t socks_closing;			    /* socket closes in flight */
	bool used;
	bool removing;		 /* SIGHUP removed it: not accepting, draining */
	bool needs_peer;	 /* a feature needs each client's address */
	bool steered;		 /* its sockets' reuseport group picks workers by client address */
	struct timer_node drain; /* after removal: --drain-timeout, then close the rest */
	struct listener_stats st;
	struct log_ratelimit rl_deny, rl_limit;
};

/* After a health change in pool u (id changed state, or UINT32_MAX for a membership
 * change): says when its traffic moves to its backups and back. Each worker judges its own
 * pool's health, so each says it once per move. */
void upool_watch_backup(struct upool *u, uint32_t id, int worker_id);

/* What main hands a worker for one listener and one pool, at start and on every SIGHUP or
 * re-resolution ("plan"). Pool and route indices in cfg name plan pools. */
struct plan_svc {
	struct config_listener cfg;
	struct listener socks[SVC_MAX_SOCKS];
	int nsocks;	   /* -1: keep the sockets the running listener of this name has */
	bool shared_socks; /* one socket dup'd to every worker (unix, systemd): no steering */
	int alog_fd;
};

struct plan_pool {
	struct config_pool cfg;
	struct backend_spec *specs; /* owned by the plan */
	int nspecs;
};

struct worker_plan {
	struct plan_svc svcs[CONFIG_MAX_LISTENERS];
	uint32_t nsvcs;
	struct plan_pool pools[CONFIG_MAX_POOLS];
	uint32_t npools;
};

#endif
