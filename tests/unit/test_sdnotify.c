/* Unit tests for sdnotify: notifications arrive on a real unix datagram socket (path and
 * abstract), and socket activation hands over descriptors 3.. only when they are ours and are
 * listening TCP sockets. Descriptor juggling happens in a forked child, never in the runner's. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "uproxy/sdnotify.h"

/* A stand-in for PID 1's notify socket. */
struct fake_manager {
	int fd;
	char dir[64];
	char path[128];
};

static void fake_manager_bind(struct fake_manager *m, const char *abstract)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	socklen_t len;

	m->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(m->fd, 0, "socket: %s", strerror(errno));
	m->dir[0] = '\0';
	if (abstract != NULL) {
		/* "@name": the leading NUL makes it abstract; the length delimits the name. */
		snprintf(m->path, sizeof(m->path), "@%s-%d", abstract, (int)getpid());
		memcpy(sa.sun_path, m->path, strlen(m->path));
		sa.sun_path[0] = '\0';
		len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(m->path));
	} else {
		strcpy(m->dir, "/tmp/uproxy-sdnotify-XXXXXX");
		cr_assert_not_null(mkdtemp(m->dir), "mkdtemp: %s", strerror(errno));
		snprintf(m->path, sizeof(m->path), "%s/notify", m->dir);
		strcpy(sa.sun_path, m->path);
		len = sizeof(sa);
	}
	cr_assert_eq(bind(m->fd, (struct sockaddr *)&sa, len), 0, "bind %s: %s", m->path,
		     strerror(errno));
	cr_assert_eq(setenv("NOTIFY_SOCKET", m->path, 1), 0);
}

static void fake_manager_expect(struct fake_manager *m, const char *want)
{
	struct pollfd p = { .fd = m->fd, .events = POLLIN };
	char buf[SDNOTIFY_MSG_MAX + 1];
	ssize_t r;

	cr_assert_eq(poll(&p, 1, 2000), 1, "no datagram within 2 s (waiting for '%s')", want);
	r = recv(m->fd, buf, sizeof(buf) - 1, 0);
	cr_assert_geq(r, 0, "recv: %s", strerror(errno));
	buf[r] = '\0';
	cr_assert_str_eq(buf, want);
}

static void fake_manager_free(struct fake_manager *m)
{
	close(m->fd);
	if (m->dir[0] != '\0') {
		unlink(m->path);
		rmdir(m->dir);
	}
	unsetenv("NOTIFY_SOCKET");
}

static void notify_roundtrip(const char *abstract)
{
	struct fake_manager m;
	struct sdnotify n;

	fake_manager_bind(&m, abstract);
	cr_assert_eq(sdnotify_open(&n), 0);
	cr_assert_geq(n.fd, 0);
	cr_assert(fcntl(n.fd, F_GETFD) & FD_CLOEXEC, "notify socket lacks FD_CLOEXEC");

	cr_assert_eq(sdnotify_ready(&n), 0);
	fake_manager_expect(&m, "READY=1");
	cr_assert_eq(sdnotify_status_sessions(&n, 42), 0);
	fake_manager_expect(&m, "STATUS=42 active sessions");
	cr_assert_eq(sdnotify_sendf(&n, "STATUS=%u active sessions\nEXTRA=%s", 7u, "x"), 0);
	fake_manager_expect(&m, "STATUS=7 active sessions\nEXTRA=x");
	cr_assert_eq(sdnotify_send(&n, "WATCHDOG=1"), 0);
	fake_manager_expect(&m, "WATCHDOG=1");
	cr_assert_eq(sdnotify_stopping(&n), 0);
	fake_manager_expect(&m, "STOPPING=1");

	sdnotify_close(&n);
	cr_assert_eq(n.fd, -1);
	sdnotify_close(&n); /* idempotent */
	cr_assert_eq(n.fd, -1);
	fake_manager_free(&m);
}

Test(sdnotify, sends_to_a_path_socket)
{
	notify_roundtrip(NULL);
}

Test(sdnotify, sends_to_an_abstract_socket)
{
	notify_roundtrip("uproxy-test-sdnotify");
}

Test(sdnotify, unset_or_empty_is_a_noop)
{
	struct sdnotify n;

	unsetenv("NOTIFY_SOCKET");
	cr_assert_eq(sdnotify_open(&n), 0);
	cr_assert_eq(n.fd, -1);
	cr_assert_eq(sdnotify_ready(&n), 0);
	cr_assert_eq(sdnotify_sendf(&n, "STATUS=%u active sessions", 1u), 0);
	cr_assert_eq(sdnotify_stopping(&n), 0);
	sdnotify_close(&n);
	cr_assert_eq(n.fd, -1);

	setenv("NOTIFY_SOCKET", "", 1);
	cr_assert_eq(sdnotify_open(&n), 0);
	cr_assert_eq(n.fd, -1);
	cr_assert_eq(sdnotify_ready(&n), 0);
	unsetenv("NOTIFY_SOCKET");
}

Test(sdnotify, rejects_bad_addresses)
{
	struct sdnotify n;
	char longpath[200];

	setenv("NOTIFY_SOCKET", "relative/notify", 1);
	cr_assert_eq(sdnotify_open(&n), -EINVAL);
	cr_assert_eq(n.fd, -1);
	setenv("NOTIFY_SOCKET", "@", 1);
	cr_assert_eq(sdnotify_open(&n), -EINVAL);
	setenv("NOTIFY_SOCKET", "/", 1);
	cr_assert_eq(sdnotify_open(&n), -EINVAL);
	setenv("NOTIFY_SOCKET", "vsock:2:1234", 1);
	cr_assert_eq(sdnotify_open(&n), -EINVAL);

	longpath[0] = '/';
	memset(longpath + 1, 'a', sizeof(longpath) - 2);
	longpath[sizeof(longpath) - 1] = '\0';
	setenv("NOTIFY_SOCKET", longpath, 1);
	cr_assert_eq(sdnotify_open(&n), -ENAMETOOLONG);
	cr_assert_eq(n.fd, -1);
	sdnotify_close(&n);

	/* 108 bytes: an abstract name fits exactly, a path does not (no room for its NUL). */
	longpath[108] = '\0';
	setenv("NOTIFY_SOCKET", longpath, 1);
	cr_assert_eq(sdnotify_open(&n), -ENAMETOOLONG);
	longpath[0] = '@';
	setenv("NOTIFY_SOCKET", longpath, 1);
	cr_assert_eq(sdnotify_open(&n), 0);
	cr_assert_geq(n.fd, 0);
	sdnotify_close(&n);
	unsetenv("NOTIFY_SOCKET");
}

Test(sdnotify, reports_a_missing_manager)
{
	struct sdnotify n;

	setenv("NOTIFY_SOCKET", "/nonexistent-uproxy-test/notify", 1);
	cr_assert_eq(sdnotify_open(&n), 0);
	cr_assert_geq(n.fd, 0);
	cr_assert_eq(sdnotify_ready(&n), -ENOENT);
	sdnotify_close(&n);
	unsetenv("NOTIFY_SOCKET");
}

Test(sdnotify, rejects_an_overlong_message)
{
	struct fake_manager m;
	struct sdnotify n;
	char big[SDNOTIFY_MSG_MAX + 1];

	fake_manager_bind(&m, NULL);
	cr_assert_eq(sdnotify_open(&n), 0);
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	cr_assert_eq(sdnotify_sendf(&n, "STATUS=%s", big), -EMSGSIZE);
	/* One byte under the limit still goes. */
	big[SDNOTIFY_MSG_MAX - 1 - strlen("STATUS=")] = '\0';
	cr_assert_eq(sdnotify_sendf(&n, "STATUS=%s", big), 0);
	cr_assert_eq(recv(m.fd, big, 1, MSG_TRUNC), SDNOTIFY_MSG_MAX - 1);
	sdnotify_close(&n);
	fake_manager_free(&m);
}

/*
 * Socket activation. These tests move descriptors onto 3, 4, ..., which in the test process may
 * be criterion's own pipes; so each runs in a forked child that reports through its exit status
 * and explains a failure on stderr.
 */

#define CHILD_CHECK(cond, ...)                                                                     \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);   \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
			_exit(1);                                                                  \
		}                                                                                  \
	} while (0)

static void run_in_child(void (*fn)(void))
{
	pid_t pid;
	int status;

	fflush(NULL);
	pid = fork();
	cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		fn();
		_exit(0);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status), "child died (status %#x)", status);
	cr_assert_eq(WEXITSTATUS(status), 0, "child failed a check (see stderr)");
}

/* A TCP socket on 127.0.0.1, an ephemeral port, listening or not, moved onto target. */
static void place_tcp(int target, int type, bool listening)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int fd = socket(AF_INET, type, 0);

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	CHILD_CHECK(fd >= 0, "socket: %s", strerror(errno));
	CHILD_CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind: %s", strerror(errno));
	if (listening)
		CHILD_CHECK(listen(fd, 16) == 0, "listen: %s", strerror(errno));
	if (fd != target) {
		CHILD_CHECK(dup2(fd, target) == target, "dup2: %s", strerror(errno));
		close(fd);
	}
	/* dup2 clears FD_CLOEXEC: exactly the state systemd hands descriptors over in. */
	CHILD_CHECK(!(fcntl(target, F_GETFD) & FD_CLOEXEC), "fd %d starts close-on-exec", target);
}

static void set_listen_env(pid_t pid, const char *nfds)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%d", (int)pid);
	setenv("LISTEN_PID", buf, 1);
	setenv("LISTEN_FDS", nfds, 1);
	setenv("LISTEN_FDNAMES", "a:b", 1);
}

static bool listen_env_cleared(void)
{
	return !getenv("LISTEN_PID") && !getenv("LISTEN_FDS") && !getenv("LISTEN_FDNAMES");
}

static void child_accepts_two(void)
{
	int fds[8] = { -1, -1 }, r;
	char why[160];

	place_tcp(3, SOCK_STREAM, true);
	place_tcp(4, SOCK_STREAM, true);
	set_listen_env(getpid(), "2");
	r = sdnotify_listen_fds(fds, 8, why, sizeof(why));
	CHILD_CHECK(r == 2, "returned %d: %s", r, why);
	CHILD_CHECK(fds[0] == 3 && fds[1] == 4, "fds %d %d", fds[0], fds[1]);
	CHILD_CHECK(listen_env_cleared(), "LISTEN_* still set");
	for (int i = 0; i < 2; i++) {
		struct sockaddr_in sa;
		socklen_t len = sizeof(sa);
		int c, a;

		CHILD_CHECK(fcntl(fds[i], F_GETFD) & FD_CLOEXEC, "fd %d lacks FD_CLOEXEC", fds[i]);
		CHILD_CHECK(getsockname(fds[i], (struct sockaddr *)&sa, &len) == 0, "getsockname");
		c = socket(AF_INET, SOCK_STREAM, 0);
		CHILD_CHECK(c >= 0, "socket");
		CHILD_CHECK(connect(c, (struct sockaddr *)&sa, len) == 0, "connect to fd %d: %s",
			    fds[i], strerror(errno));
		a = accept(fds[i], NULL, NULL);
		CHILD_CHECK(a >= 0, "accept on fd %d: %s", fds[i], strerror(errno));
		CHILD_CHECK(write(c, "x", 1) == 1, "write");
		CHILD_CHECK(read(a, &sa, 1) == 1, "read");
		close(a);
		close(c);
	}
}

Test(sdnotify, listen_fds_hands_over_listeners)
{
	run_in_child(child_accepts_two);
}

static void child_ipv6_listener(void)
{
	struct sockaddr_in6 sa = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	int fds[1], r, fd = socket(AF_INET6, SOCK_STREAM, 0);
	char why[160];

	if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		_exit(0); /* no IPv6 here: nothing to check */
	CHILD_CHECK(listen(fd, 1) == 0, "listen");
	CHILD_CHECK(dup2(fd, 3) == 3, "dup2");
	set_listen_env(getpid(), "1");
	r = sdnotify_listen_fds(fds, 1, why, sizeof(why));
	CHILD_CHECK(r == 1 && fds[0] == 3, "returned %d: %s", r, why);
}

Test(sdnotify, listen_fds_accepts_ipv6)
{
	run_in_child(child_ipv6_listener);
}

Test(sdnotify, listen_fds_not_activated)
{
	int fds[4];
	char why[160];

	/* Nothing set. */
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	cr_assert_eq(sdnotify_listen_fds(fds, 4, why, sizeof(why)), 0);
	cr_assert_str_eq(why, "");

	/* Meant for another process (our parent): not ours to take, but still cleared. */
	set_listen_env(getppid(), "2");
	cr_assert_eq(sdnotify_listen_fds(fds, 4, why, sizeof(why)), 0);
	cr_assert(listen_env_cleared());

	/* Ours, but zero descriptors. */
	set_listen_env(getpid(), "0");
	cr_assert_eq(sdnotify_listen_fds(fds, 4, why, sizeof(why)), 0);
	cr_assert(listen_env_cleared());

	/* LISTEN_FDS without LISTEN_PID. */
	setenv("LISTEN_FDS", "2", 1);
	cr_assert_eq(sdnotify_listen_fds(fds, 4, why, sizeof(why)), 0);
	cr_assert(listen_env_cleared());
}

static void bad_env(const char *pid, const char *nfds, int max, int want, const char *needle)
{
	int fds[4];
	char why[160];

	setenv("LISTEN_PID", pid, 1);
	setenv("LISTEN_FDS", nfds, 1);
	cr_assert_eq(sdnotify_listen_fds(fds, max, why, sizeof(why)), want,
		     "LISTEN_PID=%s LISTEN_FDS=%s", pid, nfds);
	cr_assert(strstr(why, needle) != NULL, "reason '%s' lacks '%s'", why, needle);
	cr_assert(listen_env_cleared());
}

Test(sdnotify, listen_fds_rejects_malformed_environment)
{
	char me[32];

	snprintf(me, sizeof(me), "%d", (int)getpid());
	bad_env("abc", "1", 4, -EINVAL, "LISTEN_PID");
	bad_env("", "1", 4, -EINVAL, "LISTEN_PID");
	bad_env("-1", "1", 4, -EINVAL, "LISTEN_PID");
	bad_env("0", "1", 4, -EINVAL, "LISTEN_PID");
	bad_env("99999999999999999999", "1", 4, -EINVAL, "LISTEN_PID");
	bad_env(me, "two", 4, -EINVAL, "LISTEN_FDS");
	bad_env(me, "", 4, -EINVAL, "LISTEN_FDS");
	bad_env(me, "-2", 4, -EINVAL, "LISTEN_FDS");
	bad_env(me, "2 ", 4, -EINVAL, "LISTEN_FDS");
	bad_env(me, "99999999999999999999", 4, -EINVAL, "LISTEN_FDS");
	bad_env(me, "5", 4, -E2BIG, "more than the 4");
}

struct bad_fd_case {
	int nfds;
	int err;
	const char *needle;
};

static struct bad_fd_case bad_case;

static void child_bad_fd(void)
{
	int fds[4], r;
	char why[160];

	set_listen_env(getpid(), bad_case.nfds == 1 ? "1" : "2");
	r = sdnotify_listen_fds(fds, 4, why, sizeof(why));
	CHILD_CHECK(r == bad_case.err, "returned %d, want %d (%s)", r, bad_case.err, why);
	CHILD_CHECK(strstr(why, bad_case.needle) != NULL, "reason '%s' lacks '%s'", why,
		    bad_case.needle);
	CHILD_CHECK(listen_env_cleared(), "LISTEN_* still set");
	/* Nothing was closed: the caller decides. */
	CHILD_CHECK(fcntl(3, F_GETFD) >= 0, "fd 3 was closed");
}

static void child_not_listening(void)
{
	place_tcp(3, SOCK_STREAM, true);
	place_tcp(4, SOCK_STREAM, false);
	bad_case = (struct bad_fd_case){ 2, -EINVAL, "fd 4 is a socket that is not listening" };
	child_bad_fd();
}

static void child_datagram(void)
{
	place_tcp(3, SOCK_DGRAM, false);
	bad_case = (struct bad_fd_case){ 1, -EINVAL, "fd 3 is not a stream socket" };
	child_bad_fd();
}

static void child_not_a_socket(void)
{
	int fd = open("/dev/null", O_RDONLY);

	CHILD_CHECK(fd >= 0 && dup2(fd, 3) == 3, "open /dev/null");
	bad_case = (struct bad_fd_case){ 1, -EINVAL, "fd 3 is not a socket" };
	child_bad_fd();
}

static void child_closed(void)
{
	place_tcp(3, SOCK_STREAM, true);
	close(4);
	bad_case = (struct bad_fd_case){ 2, -EBADF, "fd 4 is not open" };
	child_bad_fd();
}

static void child_unix_listener(void)
{
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	/* Autobind to an abstract name: nothing to clean up. */
	CHILD_CHECK(fd >= 0, "socket");
	CHILD_CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa_family_t)) == 0, "bind: %s",
		    strerror(errno));
	CHILD_CHECK(listen(fd, 1) == 0, "listen");
	CHILD_CHECK(dup2(fd, 3) == 3, "dup2");
	bad_case = (struct bad_fd_case){ 1, -EINVAL, "fd 3 is not a TCP socket" };
	child_bad_fd();
}

Test(sdnotify, listen_fds_rejects_a_socket_not_listening)
{
	run_in_child(child_not_listening);
}

Test(sdnotify, listen_fds_rejects_a_datagram_socket)
{
	run_in_child(child_datagram);
}

Test(sdnotify, listen_fds_rejects_a_file)
{
	run_in_child(child_not_a_socket);
}

Test(sdnotify, listen_fds_rejects_a_closed_fd)
{
	run_in_child(child_closed);
}

Test(sdnotify, listen_fds_rejects_a_unix_socket)
{
	run_in_child(child_unix_listener);
}
