/* worker_impl: what the worker's own files (worker.c, accept.c, slab.c, health.c, mailbox.c)
 * share. Private to src/: the rest of the program sees include/uproxy/worker.h. */
#ifndef UPROXY_WORKER_IMPL_H
#define UPROXY_WORKER_IMPL_H

#include "uproxy/worker.h"

/* The worker's own deadlines, on the same timer wheel as the sessions' (timer_node.kind; the
 * sessions' nodes are kind 0). */
enum worker_timer {
	TIMER_ACCEPT_BACKOFF = 1,
	TIMER_STOP_DEADLINE = 2, /* all sessions were told to close: wait this long at most */
	TIMER__COUNT,
	/* Nodes in the svcs and pools, data = their index. */
	TIMER_SVC_DRAIN = 5, /* a removed (or, on SIGTERM, every) listener's --drain-timeout */
	TIMER_HEALTH = 6,    /* a pool's --health-interval */
};

/* What the control thread hands a worker: a stop, or a new plan (listeners and pools). */
struct worker_mailbox {
	pthread_mutex_t mu;
	unsigned int stops;	  /* stop requests posted */
	struct worker_plan *plan; /* owned by the mailbox until taken */
	bool abort;		  /* another worker died: close everything now, no drain */
};

/* Probe and accept tags carry two indices in their slot: the pool and the backend id, or the
 * listener and its socket. */
#define TAG_POOL_SHIFT 10 /* BACKEND_MAX = 1024 ids per pool */
#define TAG_SVC_SHIFT  2  /* SVC_MAX_SOCKS = 4 sockets per listener */

/* The tag slot of listener v's socket i, and back. */
static inline uint32_t sock_tag_slot(uint32_t v, int i)
{
	return (v << TAG_SVC_SHIFT) | (uint32_t)i;
}

static inline uint32_t tag_svc(uint64_t tag)
{
	return tag_slot(tag) >> TAG_SVC_SHIFT;
}

static inline int tag_sock(uint64_t tag)
{
	return (int)(tag_slot(tag) & ((1u << TAG_SVC_SHIFT) - 1));
}

struct worker {
	int id;
	struct session_env env; /* loop, buffers, wheel, svcs, pools, clock, slab, ... */
	bool clock_stale;	/* set before each wait; the next completion re-reads the clock */

	struct bufring bufs;

	struct svc svcs[SVC_MAX];
	/* The listeners that accept (used, not removing), in slot order: what accept_update
	 * walks every iteration without touching the 27 KiB slots of the others. */
	uint8_t accepting[SVC_MAX];
	uint32_t naccepting;
	struct upool pools[UPOOL_MAX];
	struct worker_plan *plan0; /* the first plan, applied by worker_init */
	bool plan_failed;	   /* a listener or pool of a plan could not be set up */

	/* Access logs: one writer per (file, format), shared by the listeners naming them. */
	struct accesslog *alogs[CONFIG_MAX_LISTENERS];
	bool log_writing[CONFIG_MAX_LISTENERS]; /* a write of alogs[i] is in flight */
	int nalogs;
	uint32_t max_sessions;
	uint32_t free_head;
	uint32_t active;  /* sessions not FREE */
	uint32_t singles; /* single-shot accepts in flight, each holding a free slot */

	int sigfd; /* worker 0 only: SIGINT/SIGTERM, read through the ring */
	struct signalfd_siginfo siginfo;
	int notify_fd; /* eventfd: the mailbox has something */
	uint64_t notify_val;
	struct worker_mailbox mbox;
	unsigned int stops_seen;
	struct worker *peers;	       /* all workers, for worker 0 to pass a stop on */
	const struct sdnotify *notify; /* worker 0: tells systemd STOPPING=1 */
	int npeers;
	bool stopping;	       /* not accepting any more; sessions drain */
	uint32_t drain_max_ms; /* the longest --drain-timeout of the listeners, for the log */
	bool closing_all;      /* every session told to close */
	bool stop_deadline_hit;
	struct timer_node timers[TIMER__COUNT]; /* [enum worker_timer] */
	bool accept_backoff;
	unsigned int misc_inflight; /* accepts and their cancels, probes, log writes, ... */

	struct worker_stats st;
	struct stats_snapshot *snap; /* published each iteration when --stats is on */
	uint64_t backends_published_ms;
	struct httpstats hs; /* worker 0 only, with --stats */
	struct log_ratelimit rl_accept, rl_health;
};

/* Pool and listener lifetimes (worker.c). */
void upool_put(struct worker *w, uint32_t p);
void svc_put(struct worker *w, uint32_t v);
void svc_socket_closed(struct worker *w, uint32_t v);
/* Closes listener v's sockets (cancel the accepts, then close, linked). */
void svc_close_sockets(struct worker *w, uint32_t v);
/* Applies a plan: adds, changes and removes listeners and pools. Takes ownership. */
void worker_apply_plan(struct worker *w, struct worker_plan *plan);

/* Sets up the mailbox; once, before the thread starts (workers_new). */
void worker_mailbox_init(struct worker *w);

/* Tag sides of worker-level requests on a listener, and of their cancels (OP_CANCEL_W). */
enum { ACC_MULTI = 0, ACC_SINGLE = 1 };
enum { CW_MULTI = 0, CW_SINGLE = 1, CW_STOP_CANCEL = 4, CW_STOP_CLOSE = 5 };

/* slab.c: the session slots. */
struct session *slab_alloc(struct worker *w);
/* Does what a session event asked of the worker (give the slot back, pause accepting). */
void slab_outcome(struct worker *w, struct session *s, unsigned int out);

/* accept.c */
void accept_update(struct worker *w);
void accept_backoff(struct worker *w);
void accept_done(struct worker *w, const struct loop_cqe *c);

/* health.c: active health checks (--health-interval): probes every upstream and arms the next
 * round's timer. */
void health_tick(struct worker *w, uint32_t pool);
void health_done(struct worker *w, const struct loop_cqe *c);

/* mailbox.c: the control thread's requests, read when the eventfd fires. */
void mailbox_take(struct worker *w);

/* worker.c */
/* Arms (or re-arms) one of the worker's deadlines ms from now. */
void worker_timer_arm(struct worker *w, enum worker_timer k, uint32_t ms);
int worker_pool_apply(struct worker *w, uint32_t pool, const struct backend_spec *specs, int n);
void worker_stop(struct worker *w, int signo);
void worker_close_all(struct worker *w);

#endif
