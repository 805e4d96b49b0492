/* main: start-up and exit. Parses the command line, raises the fd limit, resolves the
 * upstream, opens listeners and the signalfd, and runs the worker. Exit status: 0 after a
 * stop signal, 2 for usage errors, 1 for run-time failures. Never runs data-path code. */
#include <errno.h>
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

/* fds kept aside from the per-session budget: ring, signalfd, listeners, stdio, logs. */
#define FD_RESERVE 32

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

static int open_signalfd(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	/* Blocked before any thread starts, read through the ring. */
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -1;
	return signalfd(-1, &set, SFD_CLOEXEC);
}

int main(int argc, char **argv)
{
	static struct config cfg;
	static struct worker w;
	struct addr upstreams[ADDR_MAX_RESOLVED];
	char err[512], buf[ADDR_STRLEN];
	uint32_t cap, max_sessions;
	rlim_t nofile;
	int nup, n, status;

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

	cap = worker_max_sessions_for(cfg.buffers);
	if (cfg.max_conns > cap) {
		fprintf(stderr,
			"uproxy: --max-conns %u is more than one worker can track with --buffers "
			"%u (at most %u)\n",
			cfg.max_conns, cfg.buffers, cap);
		return 2;
	}
	nofile = raise_nofile();
	if (cfg.max_conns != 0) {
		max_sessions = cfg.max_conns;
	} else {
		max_sessions = nofile > 2 * FD_RESERVE ? (uint32_t)((nofile - FD_RESERVE) / 2) : 16;
		if (max_sessions > cap)
			max_sessions = cap;
	}

	nup = addr_resolve(&cfg.upstream, upstreams, ADDR_MAX_RESOLVED, err, sizeof(err));
	if (nup < 0)
		return fail(err);

	w.id = 0;
	if (worker_init(&w, &cfg, upstreams, nup, max_sessions, err, sizeof(err)) < 0)
		return fail(err);
	n = worker_listen(&cfg.listen, w.listeners, WORKER_MAX_LISTENERS, err, sizeof(err));
	if (n < 0) {
		worker_destroy(&w);
		return fail(err);
	}
	w.nlisteners = n;
	w.sigfd = open_signalfd();
	if (w.sigfd < 0) {
		snprintf(err, sizeof(err), "cannot set up signal handling: %s", strerror(errno));
		worker_destroy(&w);
		return fail(err);
	}
	for (int i = 0; i < n; i++)
		log_info("listening on %s", addr_format(&w.listeners[i].addr, buf, sizeof(buf)));
	for (int i = 0; i < nup; i++)
		log_info("upstream %s", addr_format(&upstreams[i], buf, sizeof(buf)));
	log_info("max %u connections, %u buffers of %u bytes, open-file limit %llu", max_sessions,
		 cfg.buffers, cfg.buffer_size, (unsigned long long)nofile);

	status = worker_run(&w);
	worker_destroy(&w);
	return status;
}
