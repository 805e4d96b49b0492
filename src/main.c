/* main: start-up and exit. Parses the command line, raises the fd limit, resolves the
 * upstream, opens every worker's listeners, starts the worker threads and joins them.
 * Exit status: 0 after a stop signal, 2 for usage errors, 1 for run-time failures.
 * Never runs data-path code. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "uproxy/addr.h"
#include "uproxy/config.h"
#include "uproxy/log.h"
#include "uproxy/worker.h"

/* fds kept aside from the per-session budget: rings, signalfd, eventfds, listeners, stdio;
 * each worker past the first sets 8 more aside. */
#define FD_RESERVE 32

/* Start-up hand-shake between main and the worker threads: each reports its set-up result,
 * then waits to be told whether every worker came up (run) or not (exit quietly). */
struct startup {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int reported;
	int failed;
	bool go;
	bool decided;
	char why[512];
};

struct thread_arg {
	struct worker *w;
	struct startup *st;
	const struct config *cfg;
	const struct addr *upstreams;
	int nupstreams;
	uint32_t max_sessions;
	int status;
};

static int fail(const char *why)
{
	fprintf(stderr, "uproxy: %s\n", why);
	return 1;
}

/* Raises the soft open-file limit to the hard limit; returns the resulting soft limit. */
static rlim_t raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 1024;
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t old = rl.rlim_cur;

		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			log_warn("cannot raise the open-file limit from %llu to %llu: %s",
				 (unsigned long long)old, (unsigned long long)rl.rlim_max,
				 strerror(errno));
			rl.rlim_cur = old;
		}
	}
	return rl.rlim_cur;
}

/* Blocks SIGINT/SIGTERM in every thread (before any starts) and returns a signalfd for them,
 * which worker 0 reads through its ring. */
static int open_signalfd(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -1;
	return signalfd(-1, &set, SFD_CLOEXEC);
}

static uint32_t cpu_count(void)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return (uint32_t)CPU_COUNT(&set);
	return 1;
}

static void *worker_thread(void *p)
{
	struct thread_arg *a = p;
	struct startup *st = a->st;
	char why[512];
	int rc;

	rc = worker_init(a->w, a->cfg, a->upstreams, a->nupstreams, a->max_sessions, why,
			 sizeof(why));
	pthread_mutex_lock(&st->mu);
	st->reported++;
	if (rc < 0 && st->failed++ == 0)
		snprintf(st->why, sizeof(st->why), "%s", why);
	pthread_cond_broadcast(&st->cv);
	while (!st->decided)
		pthread_cond_wait(&st->cv, &st->mu);
	pthread_mutex_unlock(&st->mu);
	if (rc < 0) {
		a->status = 1;
		return NULL;
	}
	if (st->go)
		a->status = worker_run(a->w);
	worker_destroy(a->w);
	return NULL;
}

int main(int argc, char **argv)
{
	static struct config cfg;
	struct addr upstreams[ADDR_MAX_RESOLVED];
	struct startup st = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };
	struct worker *workers = NULL;
	struct thread_arg *args = NULL;
	pthread_t *threads = NULL;
	char err[512], buf[ADDR_STRLEN];
	uint32_t cap, total, per_worker, nworkers;
	rlim_t nofile;
	int nup, sigfd, status = 0, started = 0;

	switch (config_parse(&cfg, argc, argv, stdout, err, sizeof(err))) {
	case CONFIG_OK:
		break;
	case CONFIG_EXIT:
		return 0;
	case CONFIG_USAGE:
		fprintf(stderr, "uproxy: %s\n", err);
		return 2;
	}
	log_set_level(cfg.log_level);
	signal(SIGPIPE, SIG_IGN);

	nworkers = cfg.workers != 0 ? cfg.workers : cpu_count();
	if (nworkers > CONFIG_MAX_WORKERS)
		nworkers = CONFIG_MAX_WORKERS;
	cap = worker_max_sessions_for(cfg.buffers);
	if (cfg.max_conns != 0 && (cfg.max_conns + nworkers - 1) / nworkers > cap) {
		fprintf(stderr,
			"uproxy: --max-conns %u is more than %u worker(s) can track with --buffers "
			"%u (at most %u per worker)\n",
			cfg.max_conns, nworkers, cfg.buffers, cap);
		return 2;
	}
	nofile = raise_nofile();
	if (cfg.max_conns != 0) {
		total = cfg.max_conns;
	} else {
		rlim_t reserve = FD_RESERVE + 8 * ((rlim_t)nworkers - 1);

		total = nofile > 2 * reserve ? (uint32_t)((nofile - reserve) / 2) : 16;
	}
	per_worker = (total + nworkers - 1) / nworkers;
	if (per_worker > cap)
		per_worker = cap;

	nup = addr_resolve(&cfg.upstream, upstreams, ADDR_MAX_RESOLVED, err, sizeof(err));
	if (nup < 0)
		return fail(err);

	workers = calloc(nworkers, sizeof(*workers));
	args = calloc(nworkers, sizeof(*args));
	threads = calloc(nworkers, sizeof(*threads));
	if (workers == NULL || args == NULL || threads == NULL) {
		status = fail("out of memory");
		goto out;
	}
	/* Every worker's listeners are bound here, before any thread starts, so that a port in
	 * use or a bad address is reported once, synchronously, with exit status 1. */
	for (uint32_t i = 0; i < nworkers; i++) {
		struct worker *w = &workers[i];
		int n;

		w->id = (int)i;
		w->sigfd = -1;
		w->notify_fd = -1;
		w->peers = workers;
		w->npeers = (int)nworkers;
		n = worker_listen(&cfg.listen, w->listeners, WORKER_MAX_LISTENERS, err, sizeof(err));
		if (n < 0) {
			status = fail(err);
			goto out;
		}
		w->nlisteners = n;
	}
	sigfd = open_signalfd();
	if (sigfd < 0) {
		snprintf(err, sizeof(err), "cannot set up signal handling: %s", strerror(errno));
		status = fail(err);
		goto out;
	}
	workers[0].sigfd = sigfd;

	for (uint32_t i = 0; i < nworkers; i++) {
		args[i] = (struct thread_arg){ .w = &workers[i], .st = &st, .cfg = &cfg,
					       .upstreams = upstreams, .nupstreams = nup,
					       .max_sessions = per_worker };
		if (pthread_create(&threads[i], NULL, worker_thread, &args[i]) != 0) {
			snprintf(st.why, sizeof(st.why), "cannot start worker thread %u: %s", i,
				 strerror(errno));
			pthread_mutex_lock(&st.mu);
			st.failed++;
			pthread_mutex_unlock(&st.mu);
			break;
		}
		started++;
	}
	pthread_mutex_lock(&st.mu);
	while (st.reported < started)
		pthread_cond_wait(&st.cv, &st.mu);
	st.go = st.failed == 0;
	st.decided = true;
	pthread_cond_broadcast(&st.cv);
	pthread_mutex_unlock(&st.mu);

	if (st.go) {
		for (int i = 0; i < workers[0].nlisteners; i++)
			log_info("listening on %s",
				 addr_format(&workers[0].listeners[i].addr, buf, sizeof(buf)));
		for (int i = 0; i < nup; i++)
			log_info("upstream %s", addr_format(&upstreams[i], buf, sizeof(buf)));
		log_info("%u worker(s), max %u connections each, %u buffers of %u bytes each, "
			 "open-file limit %llu",
			 nworkers, per_worker, cfg.buffers, cfg.buffer_size,
			 (unsigned long long)nofile);
	}
	for (int i = 0; i < started; i++) {
		pthread_join(threads[i], NULL);
		if (args[i].status != 0)
			status = args[i].status;
	}
	if (!st.go)
		status = fail(st.why);
	else if (started < (int)nworkers)
		status = 1;
out:
	/* Listeners of workers that never ran (or failed) are closed here. */
	for (uint32_t i = 0; workers != NULL && i < nworkers; i++) {
		if (i >= (uint32_t)started || !st.go) {
			for (int j = 0; j < workers[i].nlisteners; j++)
				if (workers[i].listeners[j].fd >= 0)
					close(workers[i].listeners[j].fd);
		}
	}
	free(threads);
	free(args);
	free(workers);
	return status;
}
