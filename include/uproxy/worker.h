/* worker: one thread's ring, buffer ring, listeners, session slab and signal handling.
 * Shares nothing with other workers; everything on its data path goes through its ring. */
#ifndef UPROXY_WORKER_H
#define UPROXY_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/signalfd.h>

#include "uproxy/accesslog.h"
#include "uproxy/addr.h"
#include "uproxy/backend.h"
#include "uproxy/bufring.h"
#include "uproxy/config.h"
#include "uproxy/httpstats.h"
#include "uproxy/listener.h"
#include "uproxy/log.h"
#include "uproxy/loop.h"
#include "uproxy/sdnotify.h"
#include "uproxy/session.h"
#include "uproxy/stats.h"
#include "uproxy/timer.h"

#define WORKER_MAX_LISTENERS 8

/* Completion-queue sizing: the kernel allows at most 64Ki CQEs. A session in teardown can have
 * WORKER_CQES_PER_SESSION completions outstanding (2 recvs, 2 sends or shutdowns, up to 5
 * cancels, 2 closes, a connect and its linked timeout); multishot recv CQEs are bounded by the
 * buffers, multishot accept CQEs by the listen backlog. The CQ is sized for that when it fits
 * in 64Ki; beyond, the session limit still follows the open-file limit and a burst that
 * overflows the CQ is kept by the kernel and reaped by the loop (counted, never lost). */
#define WORKER_CQ_MAX		65536u
#define WORKER_CQES_PER_SESSION 13u
/* Multishot accept only while at least this many slots are free: one wake-up of a multishot
 * accept can take the whole backlog at once, and every client accepted must get a slot. */
#define WORKER_MULTISHOT_MIN_FREE (LISTENER_BACKLOG + 64u)
#define WORKER_CQ_RESERVE	  64u
#define WORKER_SQ_ENTRIES	  4096u

/* How long accept pauses after EMFILE/ENFILE/ENOMEM before trying again: as long as a session
 * waits for an fd before retrying its upstream socket. */
#define WORKER_ACCEPT_BACKOFF_MS SESSION_FD_WAIT_MS
/* How long SIGINT/SIGTERM waits for in-flight requests to finish before exiting anyway. */
#define WORKER_STOP_DEADLINE_MS 900

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

/* Sets the worker up: ring, buffers, sessions, notify eventfd. Must run on the worker's own
 * thread (the ring is single-issuer). Listeners and sigfd are handed in. */
int worker_init(struct worker *w, const struct config *cfg, const struct backend_spec *specs,
		int nspecs, uint32_t max_sessions, char *why, size_t whylen);

/* Control thread: ask worker w to stop (drain), or to take a new upstream pool (copied). */
void worker_post_stop(struct worker *w);
/* Another worker failed: w closes every session now (no drain) and exits. */
void worker_post_abort(struct worker *w);
int worker_post_pool(struct worker *w, const struct backend_spec *specs, int n);

/* Sets up the mailbox; call once before the thread starts. */
void worker_mailbox_init(struct worker *w);

/* Runs until a stop signal has been handled. Returns the process exit status. */
int worker_run(struct worker *w);

void worker_destroy(struct worker *w);

/* Publishes the counters (and, with backends, the per-upstream table) for the metrics
 * endpoint. */
void worker_publish_stats(struct worker *w, bool backends);

#endif
