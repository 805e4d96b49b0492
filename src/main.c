/* main: start-up, control and exit. Parses the command line, raises the fd limit, resolves the
 * upstreams, opens every worker's listeners and starts the worker threads; then, as the control
 * thread, re-reads the config on SIGHUP and re-resolves upstream names, handing new pools to
 * the workers. Exit status: 0 after a stop signal, 2 for usage errors, 1 for run-time failures.
 * Never runs data-path code. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <pthread.h>
#include <stdatomic.h>
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
	const struct backend_spec *specs;
	int nspecs;
	uint32_t max_sessions;
	int status;
};

/* Workers still running; the control loop ends when it reaches 0. */
static atomic_int running_workers;

/* How often the control thread looks at whether the workers are done. */
#define CONTROL_POLL_MS 100

/* Appends spec to out[0..*n) unless its address is there already (the first weight wins). */
static void pool_add(struct backend_spec *out, int *n, int max, const struct backend_spec *spec)
{
	for (int j = 0; j < *n; j++) {
		if (addr_equal(&out[j].addr, &spec->addr))
			return;
	}
	if (*n < max)
		out[(*n)++] = *spec;
}

/* Every address every --upstream names, without duplicates (first weight wins). Returns the
 * count, or -1 with why when a name does not resolve and strict is set; when not strict, an
 * entry that fails keeps the addresses it had in prev (re-resolution keeps a flaky DNS from
 * emptying the pool). */
static int resolve_pool(const struct config *cfg, struct backend_spec *out, int max,
			const struct backend_spec *prev, int nprev, bool strict, char *why,
			size_t whylen)
{
	int n = 0;

	for (uint32_t u = 0; u < cfg->nupstreams; u++) {
		const struct config_upstream *cu = &cfg->upstreams[u];
		struct addr addrs[ADDR_MAX_RESOLVED];
		int k = addr_resolve(&cu->hp, addrs, ADDR_MAX_RESOLVED, why, whylen);

		if (k < 0) {
			if (strict)
				return -1;
			log_warn("re-resolving upstream '%s' failed (%s); keeping its addresses",
				 cu->hp.host, why);
			/* The previous pool does not say which entry an address came from: every
			 * previous address on this port is kept (sin_port and sin6_port share
			 * their offset). */
			for (int i = 0; i < nprev; i++) {
				if (ntohs(prev[i].addr.u.in4.sin_port) == cu->hp.port)
					pool_add(out, &n, max, &prev[i]);
			}
			continue;
		}
		for (int i = 0; i < k; i++)
			pool_add(out, &n, max,
				 &(struct backend_spec){ .addr = addrs[i], .weight = cu->weight });
	}
	return n;
}

static bool same_pool(const struct backend_spec *a, int na, const struct backend_spec *b, int nb)
{
	if (na != nb)
		return false;
	for (int i = 0; i < na; i++) {
		if (a[i].weight != b[i].weight || !addr_equal(&a[i].addr, &b[i].addr))
			return false;
	}
	return true;
}

static void log_pool(const struct backend_spec *specs, int n)
{
	char buf[ADDR_STRLEN];

	for (int i = 0; i < n; i++)
		log_info("upstream %s weight %u", addr_format(&specs[i].addr, buf, sizeof(buf)),
			 specs[i].weight);
}

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

/* Blocks SIGINT/SIGTERM/SIGHUP in every thread (before any starts) and returns a signalfd for
 * SIGINT/SIGTERM, which worker 0 reads through its ring. */
static int open_signalfd(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP); /* taken by the control thread with sigtimedwait */
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -1;
	sigdelset(&set, SIGHUP);
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

	rc = worker_init(a->w, a->cfg, a->specs, a->nspecs, a->max_sessions, why, sizeof(why));
	pthread_mutex_lock(&st->mu);
	st->reported++;
	if (rc < 0 && st->failed++ == 0)
		snprintf(st->why, sizeof(st->why), "%s", why);
	pthread_cond_broadcast(&st->cv);
	while (!st->decided)
		pthread_cond_wait(&st->cv, &st->mu);
	pthread_mutex_unlock(&st->mu);
	if (rc < 0) {
		/* What worker_init had set up before it failed is freed here too. */
		worker_destroy(a->w);
		a->status = 1;
		atomic_fetch_sub(&running_workers, 1);
		return NULL;
	}
	if (st->go)
		a->status = worker_run(a->w);
	worker_destroy(a->w);
	atomic_fetch_sub(&running_workers, 1);
	return NULL;
}

/* --user: switch to an unprivileged user once everything privileged (binding, opening the
 * access log, raising limits) is done, before any thread starts. Never continues as root. */
static int drop_privileges(const char *name, char *err, size_t errlen)
{
	struct passwd *pw = getpwnam(name);

	if (pw == NULL) {
		snprintf(err, errlen, "--user %s: no such user", name);
		return -1;
	}
	if (pw->pw_uid == 0) {
		snprintf(err, errlen, "--user %s: that is root; name an unprivileged user", name);
		return -1;
	}
	if (initgroups(name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
		snprintf(err, errlen, "--user %s: cannot switch to it: %s%s", name, strerror(errno),
			 errno == EPERM ? " (only root can change user)" : "");
		return -1;
	}
	if (setuid(0) == 0 || getuid() == 0 || geteuid() == 0) {
		snprintf(err, errlen, "--user %s: still root after switching; refusing to run",
			 name);
		return -1;
	}
	log_info("running as user %s (uid %u, gid %u)", name, (unsigned)pw->pw_uid,
		 (unsigned)pw->pw_gid);
	return 0;
}

/* Options SIGHUP cannot change: they shape the listeners, threads and memory. */
static void warn_restart_only(const struct config *old, const struct config *new)
{
	char a[ADDR_STRLEN + ADDR_HOST_MAX], b[ADDR_STRLEN + ADDR_HOST_MAX];

	if (strcmp(addr_format_hostport(&old->listen, a, sizeof(a)),
		   addr_format_hostport(&new->listen, b, sizeof(b))) != 0)
		log_warn("SIGHUP: --listen changed (%s -> %s); that needs a restart", a, b);
	if (old->workers != new->workers || old->buffers != new->buffers ||
	    old->buffer_size != new->buffer_size || old->max_conns != new->max_conns ||
	    old->balance != new->balance || old->connect_timeout_ms != new->connect_timeout_ms ||
	    old->retries != new->retries || old->idle_timeout_ms != new->idle_timeout_ms ||
	    old->fin_timeout_ms != new->fin_timeout_ms ||
	    old->drain_timeout_ms != new->drain_timeout_ms ||
	    old->fail_threshold != new->fail_threshold ||
	    old->fail_timeout_s != new->fail_timeout_s ||
	    old->health_interval_ms != new->health_interval_ms ||
	    old->resolve_interval_s != new->resolve_interval_s || old->log_level != new->log_level)
		log_warn("SIGHUP: options other than the upstream list changed; only the upstreams "
			 "are applied now, the rest needs a restart");
}

/* The control thread's loop: until every worker has exited, wait for SIGHUP (re-read the
 * config, then re-resolve) or for the resolve interval (re-resolve), and hand a changed pool
 * to every worker. */
static void control_loop(const struct config *cfg, int argc, char **argv, struct worker *workers,
			 uint32_t nworkers, struct backend_spec *pool, int npool,
			 const struct sdnotify *sn)
{
	uint64_t since_status_ms = 0;
	static struct config cur;
	static struct backend_spec fresh[BACKEND_MAX];
	struct timespec tick = { .tv_sec = 0, .tv_nsec = CONTROL_POLL_MS * 1000000L };
	uint64_t since_resolve_ms = 0;
	sigset_t hup;
	char err[512];

	cur = *cfg;
	sigemptyset(&hup);
	sigaddset(&hup, SIGHUP);
	while (atomic_load(&running_workers) > 0) {
		bool reread = sigtimedwait(&hup, NULL, &tick) == SIGHUP;
		int n;

		since_resolve_ms += CONTROL_POLL_MS;
		since_status_ms += CONTROL_POLL_MS;
		if (sn->fd >= 0 && since_status_ms >= 1000) {
			unsigned int active = 0;

			since_status_ms = 0;
			for (uint32_t i = 0; i < nworkers; i++)
				active += worker_active(worker_nth(workers, i));
			sdnotify_status_sessions(sn, active);
		}
		if (!reread && (cur.resolve_interval_s == 0 ||
				since_resolve_ms < (uint64_t)cur.resolve_interval_s * 1000))
			continue;
		since_resolve_ms = 0;
		if (reread) {
			static struct config next;

			if (config_parse(&next, argc, argv, stdout, err, sizeof(err)) !=
			    CONFIG_OK) {
				log_error("SIGHUP: config not reloaded: %s", err);
				continue;
			}
			warn_restart_only(&cur, &next);
			memcpy(cur.upstreams, next.upstreams, sizeof(cur.upstreams));
			cur.nupstreams = next.nupstreams;
			log_info("SIGHUP: config re-read%s%s", cfg->config_path[0] ? " from " : "",
				 cfg->config_path);
		}
		n = resolve_pool(&cur, fresh, BACKEND_MAX, pool, npool, false, err, sizeof(err));
		if (n <= 0 || same_pool(fresh, n, pool, npool))
			continue;
		log_info("upstream pool changed: %d address(es) now", n);
		log_pool(fresh, n);
		memcpy(pool, fresh, (size_t)n * sizeof(*pool));
		npool = n;
		for (uint32_t i = 0; i < nworkers; i++) {
			if (worker_post_pool(worker_nth(workers, i), pool, npool) < 0)
				log_error("out of memory handing worker %u its new pool", i);
		}
	}
}

/* Everything main sets up, so that each step below is one named function. */
struct app {
	struct config cfg;
	struct backend_spec pool[BACKEND_MAX];
	int npool;
	uint32_t nworkers, per_worker;
	rlim_t nofile;
	struct worker *workers;
	struct thread_arg *args;
	pthread_t *threads;
	int started;
	int alog_fd;
	struct sdnotify sn;
	struct startup st;
	char err[512];
};

/* How many workers, and how many sessions each may hold (from the open-file limit). */
static void app_size(struct app *a)
{
	const struct config *cfg = &a->cfg;
	uint32_t total;

	a->nworkers = cfg->workers != 0 ? cfg->workers : cpu_count();
	if (a->nworkers > CONFIG_MAX_WORKERS)
		a->nworkers = CONFIG_MAX_WORKERS;
	a->nofile = raise_nofile();
	if (cfg->max_conns != 0) {
		total = cfg->max_conns;
	} else {
		rlim_t reserve = FD_RESERVE + 8 * ((rlim_t)a->nworkers - 1);

		total = a->nofile > 2 * reserve ? (uint32_t)((a->nofile - reserve) / 2) : 16;
	}
	/* The session limit follows the open-file limit only: the completion queue is sized for
	 * it where it can be, and an overflow beyond that is reaped, not avoided (worker.h). */
	a->per_worker = (total + a->nworkers - 1) / a->nworkers;
}

/* Every worker's listeners (bound here, or adopted from systemd), before any thread starts,
 * so that a port in use or a bad address is reported once, synchronously, with exit 1; and
 * the metrics listener with the workers' snapshots. */
static int app_bind(struct app *a)
{
	int act[WORKER_MAX_LISTENERS], nact;

	a->workers = workers_new(a->nworkers);
	a->args = calloc(a->nworkers, sizeof(*a->args));
	a->threads = calloc(a->nworkers, sizeof(*a->threads));
	if (a->workers == NULL || a->args == NULL || a->threads == NULL)
		return fail("out of memory");
	nact = sdnotify_listen_fds(act, WORKER_MAX_LISTENERS, a->err, sizeof(a->err));
	if (nact < 0) {
		char msg[600];

		snprintf(msg, sizeof(msg), "socket activation: %s", a->err);
		return fail(msg);
	}
	if (nact > 0) {
		/* Kept so that a SIGHUP re-parse still accepts a config without --listen. */
		setenv("UPROXY_SOCKET_ACTIVATED", "1", 1);
		if (a->cfg.listen.port != 0)
			log_info(
				"socket-activated: serving the %d sockets systemd passed; --listen "
				"is not bound",
				nact);
	}
	/* Before --user drops the rights that may be needed to reach systemd's socket. */
	if (sdnotify_open(&a->sn) < 0)
		log_warn("NOTIFY_SOCKET is set but unusable; not notifying systemd");
	for (uint32_t i = 0; i < a->nworkers; i++) {
		if (worker_bind(worker_nth(a->workers, i), &a->cfg.listen, act, nact, a->err,
				sizeof(a->err)) < 0)
			return fail(a->err);
	}
	if (a->cfg.stats.port == 0)
		return 0;
	for (uint32_t i = 0; i < a->nworkers; i++) {
		if (worker_enable_stats(worker_nth(a->workers, i)) < 0)
			return fail("out of memory");
	}
	{
		struct listener sl[WORKER_MAX_LISTENERS];
		int n = listener_open(&a->cfg.stats, sl, WORKER_MAX_LISTENERS, a->err,
				      sizeof(a->err));

		if (n < 0) {
			char msg[600];

			snprintf(msg, sizeof(msg), "--stats: %s", a->err);
			return fail(msg);
		}
		int fds[WORKER_MAX_LISTENERS];

		for (int i = 0; i < n; i++)
			fds[i] = sl[i].fd;
		worker_serve_stats(worker_nth(a->workers, 0), fds, n);
	}
	return 0;
}

/* --access-log: one file (or stdout) shared by every worker's writes. */
static int app_open_access_log(struct app *a)
{
	if (a->cfg.access_log[0] == '\0')
		return 0;
	a->alog_fd =
		strcmp(a->cfg.access_log, "-") == 0
			? STDOUT_FILENO
			: open(a->cfg.access_log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (a->alog_fd < 0) {
		snprintf(a->err, sizeof(a->err), "cannot open --access-log '%.300s': %s",
			 a->cfg.access_log, strerror(errno));
		return fail(a->err);
	}
	for (uint32_t i = 0; i < a->nworkers; i++)
		worker_set_access_log(worker_nth(a->workers, i), a->alog_fd);
	return 0;
}

/* --user, once everything privileged is done; then SIGINT/SIGTERM go to worker 0's loop. */
static int app_drop_and_signals(struct app *a)
{
	int sigfd;

	if (a->cfg.user[0] != '\0' && drop_privileges(a->cfg.user, a->err, sizeof(a->err)) < 0)
		return fail(a->err);
	sigfd = open_signalfd();
	if (sigfd < 0) {
		snprintf(a->err, sizeof(a->err), "cannot set up signal handling: %s",
			 strerror(errno));
		return fail(a->err);
	}
	worker_set_signals(worker_nth(a->workers, 0), sigfd, &a->sn);
	return 0;
}

/* Picks the event backend once for the process (--backend; auto: io_uring where it can be set
 * up, else epoll, saying why once); every worker then runs on it. */
static void app_choose_backend(struct app *a)
{
	char why[1024];

	a->cfg.backend = loop_choose_backend(a->cfg.backend, why, sizeof(why));
	if (why[0] != '\0')
		log_warn("%s", why);
	log_info("event backend: %s", loop_backend_str(a->cfg.backend));
}

/* Starts every worker thread and waits until each has reported its set-up; they run only if
 * all came up (st.go). */
static void app_start_workers(struct app *a)
{
	struct startup *st = &a->st;

	for (uint32_t i = 0; i < a->nworkers; i++) {
		a->args[i] = (struct thread_arg){ .w = worker_nth(a->workers, i),
						  .st = st,
						  .cfg = &a->cfg,
						  .specs = a->pool,
						  .nspecs = a->npool,
						  .max_sessions = a->per_worker };
		if (pthread_create(&a->threads[i], NULL, worker_thread, &a->args[i]) != 0) {
			snprintf(st->why, sizeof(st->why), "cannot start worker thread %u: %s", i,
				 strerror(errno));
			pthread_mutex_lock(&st->mu);
			st->failed++;
			pthread_mutex_unlock(&st->mu);
			break;
		}
		a->started++;
		atomic_fetch_add(&running_workers, 1);
	}
	pthread_mutex_lock(&st->mu);
	while (st->reported < a->started)
		pthread_cond_wait(&st->cv, &st->mu);
	st->go = st->failed == 0;
	st->decided = true;
	pthread_cond_broadcast(&st->cv);
	pthread_mutex_unlock(&st->mu);
}

/* The start-up lines, and READY=1 to systemd. */
static void app_announce(struct app *a)
{
	char buf[ADDR_STRLEN];

	for (int i = 0; i < worker_listener_count(worker_nth(a->workers, 0)); i++)
		log_info("listening on %s",
			 addr_format(worker_listener_addr(worker_nth(a->workers, 0), i), buf,
				     sizeof(buf)));
	if (a->cfg.stats.port) {
		char hp[ADDR_STRLEN + ADDR_HOST_MAX];

		log_info("metrics at http://%s/metrics",
			 addr_format_hostport(&a->cfg.stats, hp, sizeof(hp)));
	}
	log_pool(a->pool, a->npool);
	log_info("%u worker(s), max %u connections each, %u buffers of %u bytes each, "
		 "balance %s, open-file limit %llu",
		 a->nworkers, a->per_worker, a->cfg.buffers, a->cfg.buffer_size,
		 backend_balance_name(a->cfg.balance), (unsigned long long)a->nofile);
	sdnotify_ready(&a->sn);
	sdnotify_status_sessions(&a->sn, 0);
}

/* Waits for every worker; the exit status is the first non-zero one. */
static int app_join(struct app *a)
{
	int status = 0;

	for (int i = 0; i < a->started; i++) {
		pthread_join(a->threads[i], NULL);
		if (a->args[i].status != 0)
			status = a->args[i].status;
	}
	if (!a->st.go)
		return fail(a->st.why);
	if (a->started < (int)a->nworkers)
		return 1;
	return status;
}

/* Closes what the workers did not (listeners of workers that never ran or failed, metrics
 * sockets when nothing ran) and frees the rest. */
static void app_cleanup(struct app *a)
{
	workers_free(a->workers, a->nworkers);
	if (a->alog_fd > STDOUT_FILENO)
		close(a->alog_fd);
	sdnotify_close(&a->sn);
	free(a->threads);
	free(a->args);
}

int main(int argc, char **argv)
{
	static struct app app = {
		.alog_fd = -1,
		.sn = { .fd = -1 },
		.st = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER },
	};
	struct app *a = &app;
	int status;

	switch (config_parse(&a->cfg, argc, argv, stdout, a->err, sizeof(a->err))) {
	case CONFIG_OK:
		break;
	case CONFIG_EXIT:
		return 0;
	case CONFIG_USAGE:
		fprintf(stderr, "uproxy: %s\n", a->err);
		return 2;
	}
	log_set_level(a->cfg.log_level);
	signal(SIGPIPE, SIG_IGN);
	app_size(a);
	a->npool =
		resolve_pool(&a->cfg, a->pool, BACKEND_MAX, NULL, 0, true, a->err, sizeof(a->err));
	if (a->npool < 0)
		return fail(a->err);
	status = app_bind(a);
	if (status == 0)
		status = app_open_access_log(a);
	if (status == 0)
		status = app_drop_and_signals(a);
	if (status == 0) {
		app_choose_backend(a);
		app_start_workers(a);
		if (a->st.go) {
			app_announce(a);
			control_loop(&a->cfg, argc, argv, a->workers, a->nworkers, a->pool,
				     a->npool, &a->sn);
		}
		status = app_join(a);
	}
	app_cleanup(a);
	return status;
}
