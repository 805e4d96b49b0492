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
	TIMER_DRAIN = 3,	 /* --drain-timeout after SIGTERM */
	TIMER_HEALTH = 4,	 /* --health-interval */
	TIMER__COUNT
};

/* Active health probe of one backend id. */
struct probe {
	int fd;
	bool busy;
};

/* What the control thread hands a worker: a stop, or a new upstream pool. */
struct worker_mailbox {
	pthread_mutex_t mu;
	unsigned int stops;	    /* stop requests posted */
	struct backend_spec *specs; /* new pool, owned by the mailbox until taken */
	int nspecs;
	bool update;
	bool abort; /* another worker died: close everything now, no drain */
};

struct worker {
	int id;
	struct session_env env; /* loop, buffers, wheel, pool, config, clock, slab, ... */
	struct addr *baddr;	/* per backend id (env.baddr): its address */
	bool clock_stale;	/* set before each wait; the next completion re-reads the clock */
	struct probe *probes;
	uint32_t *bgen; /* per backend id: bumped when the id names a new address */

	struct bufring bufs;

	struct listener listeners[WORKER_MAX_LISTENERS];
	int nlisteners;

	int alog_fd;	  /* its file (shared by the workers), -1 when off */
	bool log_writing; /* an access-log write is in flight */
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
	bool stopping;	  /* not accepting any more; sessions drain */
	bool closing_all; /* every session told to close */
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
void health_tick(struct worker *w);
void health_done(struct worker *w, const struct loop_cqe *c);

/* mailbox.c: the control thread's requests, read when the eventfd fires. */
void mailbox_take(struct worker *w);

/* worker.c */
/* Arms (or re-arms) one of the worker's deadlines ms from now. */
void worker_timer_arm(struct worker *w, enum worker_timer k, uint32_t ms);
int worker_pool_apply(struct worker *w, const struct backend_spec *specs, int n);
void worker_stop(struct worker *w, int signo);
void worker_close_all(struct worker *w);

#endif
