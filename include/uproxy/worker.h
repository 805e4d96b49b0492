/* worker: one thread's loop, buffers, listeners, session slab and signal handling. Shares
 * nothing with other workers but a mailbox; everything on its data path goes through its loop.
 * struct worker is private (src/worker_impl.h): main sets workers up through these calls. */
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
#include "uproxy/service.h"
#include "uproxy/session.h"
#include "uproxy/stats.h"
#include "uproxy/timer.h"

/* Sockets one listener may open (":PORT": IPv4 and IPv6) or adopt from systemd. */
#define WORKER_MAX_LISTENERS SVC_MAX_SOCKS

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

/* A worker; its fields are private to src/ (worker_impl.h). */
struct worker;

/* The n workers of the process (ids 0..n-1), each knowing the others so that worker 0 can pass
 * a stop on. NULL when out of memory. */
struct worker *workers_new(uint32_t n);
/* Worker i of an array from workers_new. */
struct worker *worker_nth(struct worker *ws, uint32_t i);
/* Closes what workers that never ran still hold (listeners, metrics sockets) and frees all n. */
void workers_free(struct worker *ws, uint32_t n);

/* --stats: every worker publishes a snapshot (-ENOMEM if it cannot have one); worker 0 serves
 * /metrics on the n listening sockets fds. */
int worker_enable_stats(struct worker *w);
void worker_serve_stats(struct worker *w, const int *fds, int n);
/* Worker 0: SIGINT/SIGTERM arrive on sigfd; sn is told STOPPING=1. */
void worker_set_signals(struct worker *w, int sigfd, const struct sdnotify *sn);
/* Sessions open now (read by the control thread, relaxed). */
uint32_t worker_active(const struct worker *w);

/* The first plan (listeners with their sockets, pools with their addresses), applied by
 * worker_init; the worker owns it from here on (workers_free frees it if it never ran). */
void worker_set_plan(struct worker *w, struct worker_plan *plan);

/* Sets the worker up: ring, buffers, sessions, notify eventfd, then its first plan. Must run
 * on the worker's own thread (the ring is single-issuer). cfg's global options only. */
int worker_init(struct worker *w, const struct config *cfg, uint32_t max_sessions, char *why,
		size_t whylen);

/* Control thread: ask worker w to stop (drain). */
void worker_post_stop(struct worker *w);
/* Another worker failed: w closes every session now (no drain) and exits. */
void worker_post_abort(struct worker *w);
/* Control thread: hand w a new plan (SIGHUP, re-resolution); w owns it from here on. A plan
 * still pending is replaced (its new sockets closed): callers wait for worker_plan_taken. */
void worker_post_plan(struct worker *w, struct worker_plan *plan);
bool worker_plan_taken(struct worker *w);
/* Frees a plan: its pools' addresses, and the sockets it still holds (nsocks > 0). */
void worker_plan_free(struct worker_plan *plan);

/* Runs until a stop signal has been handled. Returns the process exit status. */
int worker_run(struct worker *w);

/* Frees everything the worker holds; safe on one whose worker_init failed part-way. */
void worker_destroy(struct worker *w);

/* Publishes the counters (and, with backends, the per-upstream table) for the metrics
 * endpoint. */
void worker_publish_stats(struct worker *w, bool backends);

#endif
