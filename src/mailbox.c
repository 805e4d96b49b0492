/* mailbox: how the control thread talks to a worker: a mutex-guarded box (stops, a new upstream
 * pool, an abort) and an eventfd the worker reads through its loop. The only state two threads
 * share; the worker never blocks on it for longer than a copy. */
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

int worker_post_pool(struct worker *w, const struct backend_spec *specs, int n)
{
	struct backend_spec *copy = malloc((size_t)(n > 0 ? n : 1) * sizeof(*copy));

	if (copy == NULL)
		return -ENOMEM;
	memcpy(copy, specs, (size_t)n * sizeof(*copy));
	pthread_mutex_lock(&w->mbox.mu);
	free(w->mbox.specs);
	w->mbox.specs = copy;
	w->mbox.nspecs = n;
	w->mbox.update = true;
	pthread_mutex_unlock(&w->mbox.mu);
	mailbox_ring(w);
	return 0;
}

void mailbox_take(struct worker *w)
{
	struct backend_spec *specs = NULL;
	unsigned int stops;
	int n = 0;
	bool update, abort_now;

	pthread_mutex_lock(&w->mbox.mu);
	stops = w->mbox.stops;
	abort_now = w->mbox.abort;
	update = w->mbox.update;
	if (update) {
		specs = w->mbox.specs;
		n = w->mbox.nspecs;
		w->mbox.specs = NULL;
		w->mbox.update = false;
	}
	pthread_mutex_unlock(&w->mbox.mu);
	if (update) {
		int rc = worker_pool_apply(w, specs, n);

		w->env.backends_dirty = true;
		if (rc < 0)
			log_error("worker %d: upstream pool update refused: %s", w->id,
				  strerror(-rc));
		else
			log_debug("worker %d: upstream pool now has %u members", w->id,
				  backend_count(w->env.pool));
		free(specs);
	}
	while (w->stops_seen < stops) {
		w->stops_seen++;
		worker_stop(w, SIGTERM);
	}
	if (abort_now)
		worker_close_all(w);
}
