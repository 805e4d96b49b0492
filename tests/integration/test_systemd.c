/* systemd integration and privilege dropping: the NOTIFY_SOCKET protocol
 * (READY=1, STATUS=<n> active sessions, STOPPING=1), socket activation
 * through LISTEN_PID/LISTEN_FDS (and a bad fd 3), and --user (drops every
 * uid to the named user, refuses root, unknown users and non-root callers). */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Like proc_spawn (stdout/stderr captured, stdin /dev/null, default signals,
 * dies with us), but fds 3 .. 3 + keep - 1 stay open, the environment is
 * envp, and hook (if any) runs in the child just before exec. A process
 * spawned here is not in the harness's kill-on-exit list: the tests reap or
 * kill it themselves, and PR_SET_PDEATHSIG covers an aborted test. */
static void spawn_local(struct proc *p, char *const argv[], char *const envp[], int keep,
			void (*hook)(void *), void *arg)
{
	pid_t parent = getpid();
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);

	memset(p, 0, sizeof(*p));
	p->out_fd = memfd_create("uproxy-stdout", MFD_CLOEXEC);
	p->err_fd = memfd_create("uproxy-stderr", MFD_CLOEXEC);
	cr_assert(p->out_fd >= 0 && p->err_fd >= 0 && devnull >= 0, "memfd/open: %s",
		  strerror(errno));
	p->pid = fork();
	cr_assert_geq(p->pid, 0, "fork: %s", strerror(errno));
	if (p->pid == 0) {
		struct sigaction sa = { .sa_handler = SIG_DFL };
		sigset_t none;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		for (int s = 1; s < NSIG; s++)
			sigaction(s, &sa, NULL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (dup2(devnull, 0) < 0 || dup2(p->out_fd, 1) < 0 || dup2(p->err_fd, 2) < 0)
			_exit(127);
		if (hook)
			hook(arg);
		close_range(3 + (unsigned int)keep, ~0U, 0);
		execve(argv[0], argv, envp);
		_exit(127);
	}
	close(devnull);
}

static void stop_local(struct proc *p)
{
	if (p->pid > 0 && !p->reaped) {
		kill(p->pid, SIGTERM);
		if (!proc_wait(p, 2000))
			proc_kill(p);
	}
}

/* ---- sd_notify ------------------------------------------------------------ */

/* Next datagram on fd containing want (other messages are skipped and kept in
 * seen, for the failure message), within timeout_ms. */
static bool await_msg(int fd, const char *want, int timeout_ms, char *seen, size_t seen_len)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;

	for (;;) {
		uint64_t now = now_ms();
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		char msg[512];
		ssize_t n;

		if (now >= deadline)
			return false;
		if (poll(&pfd, 1, (int)(deadline - now)) <= 0)
			continue;
		n = recv(fd, msg, sizeof(msg) - 1, MSG_DONTWAIT);
		if (n < 0)
			continue;
		msg[n] = '\0';
		size_t used = strlen(seen);

		snprintf(seen + used, seen_len - used, "[%s] ", msg);
		/* a datagram may carry several newline-separated assignments */
		for (char *line = strtok(msg, "\n"); line; line = strtok(NULL, "\n"))
			if (strcmp(line, want) == 0)
				return true;
	}
}

Test(systemd, sd_notify, .timeout = 30)
{
	char dir[] = "/tmp/uproxy-sd-XXXXXX", seen[8192] = "";
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct backend b;
	struct proxy px;
	int nfd, cl[3];

	cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", dir);
	nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(nfd, 0, "socket: %s", strerror(errno));
	cr_assert_eq(bind(nfd, (struct sockaddr *)&sa, sizeof(sa)), 0, "bind %s: %s", sa.sun_path,
		     strerror(errno));

	setenv("NOTIFY_SOCKET", sa.sun_path, 1);
	setup_echo(&b, &px, NULL);
	unsetenv("NOTIFY_SOCKET");

	cr_assert(await_msg(nfd, "READY=1", 2000, seen, sizeof(seen)),
		  "no READY=1 within 2 s of start-up; got: %s", seen);
	cr_assert(await_msg(nfd, "STATUS=0 active sessions", 2500, seen, sizeof(seen)),
		  "no 'STATUS=0 active sessions'; got: %s", seen);

	for (int i = 0; i < 3; i++) {
		cl[i] = tcp_connect(AF_INET, px.port, 2000);
		cr_assert_geq(cl[i], 0, "client %d: connect: %s", i, strerror(errno));
		cr_assert(echo_roundtrip(cl[i], 0x5d0 + (uint64_t)i, 100, 2000),
			  "client %d: echo through the proxy failed", i);
	}
	seen[0] = '\0';
	cr_assert(await_msg(nfd, "STATUS=3 active sessions", 2500, seen, sizeof(seen)),
		  "no 'STATUS=3 active sessions' within 2.5 s with 3 sessions open; got: %s",
		  seen);
	for (int i = 0; i < 3; i++)
		close(cl[i]);
	assert_proxy_idle(&px, 2000, "after the 3 clients closed");

	seen[0] = '\0';
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	cr_assert(await_msg(nfd, "STOPPING=1", 500, seen, sizeof(seen)),
		  "no STOPPING=1 after SIGTERM; got: %s", seen);
	backend_stop(&b);
	close(nfd);
	unlink(sa.sun_path);
	rmdir(dir);
}

/* ---- socket activation ---------------------------------------------------- */

struct activation {
	int fd;            /* becomes fd 3 */
	char *pid_slot;    /* "LISTEN_PID=" buffer filled in the child */
	size_t pid_len;
};

static void activation_hook(void *arg)
{
	struct activation *a = arg;

	if (dup2(a->fd, 3) < 0)
		_exit(126);
	snprintf(a->pid_slot, a->pid_len, "LISTEN_PID=%d", (int)getpid());
}

/* environ + LISTEN_FDS=1 + a LISTEN_PID slot the child fills in. */
static char **activation_env(char *pid_slot)
{
	size_t n = 0, k = 0;
	char **env;

	while (environ[n])
		n++;
	env = calloc(n + 3, sizeof(*env));
	cr_assert_not_null(env);
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "LISTEN_", 7) != 0 &&
		    strncmp(environ[i], "NOTIFY_SOCKET=", 14) != 0)
			env[k++] = environ[i];
	env[k++] = "LISTEN_FDS=1";
	env[k++] = pid_slot;
	env[k] = NULL;
	return env;
}

Test(systemd, socket_activation, .timeout = 30)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t alen = sizeof(a);
	char up[64], pid_slot[64] = "LISTEN_PID=0";
	struct activation act = { .pid_slot = pid_slot, .pid_len = sizeof(pid_slot) };
	struct backend b;
	struct proc p;
	int lfd, fd;
	uint16_t port;

	backend_bind(&b, AF_INET);
	backend_run(&b, BK_ECHO);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(lfd, 0);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0, "bind: %s", strerror(errno));
	cr_assert_eq(listen(lfd, 128), 0);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&a, &alen), 0);
	port = ntohs(a.sin_port);

	snprintf(up, sizeof(up), "127.0.0.1:%u", b.port);
	char *argv[] = { (char *)uproxy_bin(), "-u", up, NULL };
	char **env = activation_env(pid_slot);

	act.fd = lfd;
	spawn_local(&p, argv, env, 1, activation_hook, &act);
	close(lfd); /* only uproxy holds the listener now */
	free(env);

	fd = tcp_connect(AF_INET, port, 2000);
	cr_assert_geq(fd, 0, "connect to the activated socket on port %u: %s", port,
		      strerror(errno));
	if (!echo_roundtrip(fd, 0x5a, 64 * 1024, 3000)) {
		char *err = proc_stderr(&p);

		stop_local(&p);
		cr_assert_fail("no echo through the socket-activated uproxy on port %u; stderr:\n%s",
			       port, err);
	}
	close(fd);
	cr_assert_geq(atomic_load(&b.accepted), 1, "the backend saw no connection");

	kill(p.pid, SIGTERM);
	bool exited = proc_wait(&p, 2000);
	char st[64], *err = proc_stderr(&p);

	if (!exited)
		proc_kill(&p);
	cr_assert(exited && WIFEXITED(p.status) && WEXITSTATUS(p.status) == 0,
		  "socket-activated uproxy %s on SIGTERM, want exit 0; stderr:\n%s",
		  status_str(&p, st, sizeof(st)), err);
	free(err);
	proc_release(&p);
	backend_stop(&b);
}

Test(systemd, socket_activation_not_a_socket, .timeout = 30)
{
	char pid_slot[64] = "LISTEN_PID=0", st[64];
	struct activation act = { .pid_slot = pid_slot, .pid_len = sizeof(pid_slot) };
	char *argv[] = { (char *)uproxy_bin(), "-u", "127.0.0.1:9", NULL };
	char **env = activation_env(pid_slot);
	struct proc p;

	act.fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	cr_assert_geq(act.fd, 0);
	spawn_local(&p, argv, env, 1, activation_hook, &act);
	close(act.fd);
	free(env);
	bool exited = proc_wait(&p, 3000);
	char *err = proc_stderr(&p);

	if (!exited)
		proc_kill(&p);
	cr_assert(exited && WIFEXITED(p.status) && WEXITSTATUS(p.status) == 1,
		  "with fd 3 = /dev/null uproxy %s, want exit 1; stderr:\n%s",
		  status_str(&p, st, sizeof(st)), err);
	cr_assert(strstr(err, "fd 3") != NULL, "the message does not name fd 3:\n%s", err);
	free(err);
	proc_release(&p);
}

/* ---- --user ------------------------------------------------------------------ */

Test(systemd, user_nobody, .timeout = 30)
{
	const char *const extra[] = { "--user", "nobody", NULL };
	char path[64], line[256], uids[256] = "", gids[256] = "";
	struct backend b;
	struct proxy px;
	FILE *f;
	int fd;

	if (geteuid() != 0)
		cr_skip_test("needs root to drop to nobody");
	setup_echo(&b, &px, extra);
	snprintf(path, sizeof(path), "/proc/%d/status", (int)px.proc.pid);
	f = fopen(path, "r");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "Uid:", 4) == 0)
			snprintf(uids, sizeof(uids), "%s", line);
		if (strncmp(line, "Gid:", 4) == 0)
			snprintf(gids, sizeof(gids), "%s", line);
	}
	fclose(f);
	cr_assert_str_eq(uids, "Uid:\t65534\t65534\t65534\t65534\n",
			 "--user nobody: real/effective/saved/fs uids are %s", uids);
	cr_assert_str_eq(gids, "Gid:\t65534\t65534\t65534\t65534\n",
			 "--user nobody: real/effective/saved/fs gids are %s", gids);

	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect: %s", strerror(errno));
	cr_assert(echo_roundtrip(fd, 0x0b0d1, 256 * 1024, 3000),
		  "echo through the proxy running as nobody failed");
	close(fd);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

static void become_nobody(void *arg)
{
	(void)arg;
	if (setgroups(0, NULL) < 0 || setresgid(65534, 65534, 65534) < 0 ||
	    setresuid(65534, 65534, 65534) < 0)
		_exit(126);
}

Test(systemd, user_refused, .timeout = 30)
{
	char listen[64], st[64];
	uint16_t port = free_port();
	struct run_result r;

	if (geteuid() != 0)
		cr_skip_test("needs root");
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);

	run_uproxy(&r, 3000, (const char *const[]){ "-l", listen, "-u", "127.0.0.1:9", "--user",
						    "root", NULL });
	cr_assert(r.exited && r.code == 1, "--user root: exited=%d code %d, want exit 1; "
		  "stderr:\n%s", r.exited, r.code, r.err);
	cr_assert(strstr(r.err, "root") != NULL, "--user root: message does not name it:\n%s",
		  r.err);
	run_result_free(&r);

	run_uproxy(&r, 3000, (const char *const[]){ "-l", listen, "-u", "127.0.0.1:9", "--user",
						    "no-such-user-xyz", NULL });
	cr_assert(r.exited && r.code == 1, "--user no-such-user-xyz: exited=%d code %d, want "
		  "exit 1; stderr:\n%s", r.exited, r.code, r.err);
	cr_assert(strstr(r.err, "no-such-user-xyz") != NULL,
		  "--user no-such-user-xyz: message does not name it:\n%s", r.err);
	run_result_free(&r);

	/* not root: cannot switch to anyone */
	char *argv[] = { (char *)uproxy_bin(), "-l", listen, "-u", "127.0.0.1:9", "--user",
			 "daemon", NULL };
	struct proc p;

	spawn_local(&p, argv, environ, 0, become_nobody, NULL);
	bool exited = proc_wait(&p, 3000);
	char *err = proc_stderr(&p);

	if (!exited)
		proc_kill(&p);
	cr_assert(exited && WIFEXITED(p.status) && WEXITSTATUS(p.status) == 1,
		  "non-root --user daemon: %s, want exit 1; stderr:\n%s",
		  status_str(&p, st, sizeof(st)), err);
	cr_assert(strstr(err, "only root") != NULL,
		  "non-root --user daemon: no 'only root' in the message:\n%s", err);
	free(err);
	proc_release(&p);
}
