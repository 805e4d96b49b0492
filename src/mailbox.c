/* mailbox: how the control thread talks to a worker: a mutex-guarded box (stops, a new plan of
 * listeners and pools, an abort) and an eventfd the worker reads through its loop. The only state
 * two threads share; the worker never blocks on it for longer than a copy. */
#include "worker_impl.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void worker_mailbox_init(struct worker *w)
{
	pthread_mutex_init(&w->mbox.mu, NULL);
}

static void mailbox_ring(struct worker *w)
{
	static const uint64_t one = 1;

	if (write(w->notify_fd, &one, sizeof(one)) < 0)
		log_error("cannot notify worker %d: %s", w->id, strerror(errno));
}

void worker_post_stop(struct worker *w)
{
	pthread_mutex_lock(&w->mbox.mu);
	w->mbox.stops++;
	pthread_mutex_unlock(&w->mbox.mu);
	mailbox_ring(w);
}

void worker_post_abort(struct worker *w)
{
	pthread_mutex_lock(&w->mbox.mu);
	w->mbox.abort = true;
	w->mbox.stops++;
	pthread_mutex_unlock(&w->mbox.mu);
	mailbox_ring(w);
}

void worker_post_plan(struct worker *w, struct worker_plan *plan)
{
	struct worker_plan *old;

	pthread_mutex_lock(&w->mbox.mu);
	old = w->mbox.plan;
	w->mbox.plan = plan;
	pthread_mutex_unlock(&w->mbox.mu);
	worker_plan_free(old);
	mailbox_ring(w);
}

bool worker_plan_taken(struct worker *w)
{
	bool taken;

	pthread_mutex_lock(&w->mbox.mu);
	taken = w->mbox.plan == NULL;
	pthread_mutex_unlock(&w->mbox.mu);
	return taken;
}

void mailbox_take(struct worker *w)
{
	struct worker_plan *plan;
	unsigned int stops;
	bool abort_now;

	pthread_mutex_lock(&w->mbox.mu);
	stops = w->mbox.stops;
	abort_now = w->mbox.abort;
	plan = w->mbox.plan;
	w->mbox.plan = NULL;
	pthread_mutex_unlock(&w->mbox.mu);
	if (plan != NULL) {
		if (w->stopping)
			worker_plan_free(plan); /* too late: listeners are closed for good */
		else
			worker_apply_plan(w, plan);
	}
	while (w->stops_seen < stops) {
		w->stops_seen++;
		worker_stop(w, SIGTERM);
	}
	if (abort_now)
		worker_close_all(w);
}
