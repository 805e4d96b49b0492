/* uproxy --check (issue 12, part 7) through the real binary: a good file (or a good command
 * line) prints "configuration OK" on stdout and exits 0 within 1 s, having bound, created and
 * connected nothing (its ports stay free, and it passes while another process holds them; no
 * access-log file and no unix socket file appears; the socket file of a running proxy is left
 * alone); a bad one exits 2 with one line per problem on stderr: the file and line of a parse
 * error, both lines of a duplicate address (also one spelled two ways, localhost:P and
 * 127.0.0.1:P), every upstream host and a --stats host that does not resolve. */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define OK_LINE "configuration OK"
/* --check parses, validates and resolves: 1 s is ample on loopback. */
#define CHECK_MAX_MS 1000

/* ---- helpers ---------------------------------------------------------------- */

struct cfile {
	char dir[64], path[128];
};

/* A private directory (removed by the test's .fini) and the file's name in it. */
static void cfile_init(struct cfile *f)
{
	conf_dir_make(f->dir, sizeof(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/uproxy.conf", f->dir);
}

/* Runs uproxy with args (NULL-terminated) and waits ≤ 5 s for it to exit. */
static void run(struct run_result *r, const char *const args[], const char *what)
{
	run_uproxy(r, 5000, args);
	cr_assert(r->exited, "%s: uproxy still running after 5 s", what);
}

/* Asserts the run passed the check: exit 0, "configuration OK" on stdout, within 1 s. */
static void expect_ok(const struct run_result *r, const char *what)
{
	cr_assert_eq(r->code, 0, "%s: --check exited %d, want 0; stderr:\n%s", what, r->code,
		     r->err);
	cr_assert_not_null(strstr(r->out, OK_LINE), "%s: no '" OK_LINE "' on stdout; stdout:\n%s"
			   "\nstderr:\n%s", what, r->out, r->err);
	cr_assert_leq(r->ms, CHECK_MAX_MS, "%s: --check took %llu ms, want ≤ %d ms", what,
		      (unsigned long long)r->ms, CHECK_MAX_MS);
}

/* Asserts the run failed the check: exit 2 and no "configuration OK". */
static void expect_fail(const struct run_result *r, const char *what)
{
	cr_assert_eq(r->code, 2, "%s: --check exited %d, want 2; stdout:\n%s\nstderr:\n%s", what,
		     r->code, r->out, r->err);
	cr_assert_null(strstr(r->out, OK_LINE), "%s: exit 2 but stdout says '" OK_LINE "':\n%s",
		       what, r->out);
}

/* A listening TCP socket on addr:port (INADDR_LOOPBACK, INADDR_ANY) or -1 with errno. */
static int tcp_listen4(uint32_t addr, uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(addr) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 8) < 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* Asserts the port is free on 127.0.0.1 (--check left nothing bound): binds it and lets go. */
static void expect_port_free(uint16_t port, const char *what)
{
	int fd = tcp_listen4(INADDR_LOOPBACK, port);

	cr_assert_geq(fd, 0, "%s: cannot bind 127.0.0.1:%u right after --check: %s", what, port,
		      strerror(errno));
	close(fd);
}

/* true if anything (file, socket, link) is at path. */
static bool file_exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

/* The ports of the good file. */
struct good {
	uint16_t pa, pb, stats;
	char alog_a[160], alog_b[160];
};

/* Two listeners (alpha on its own upstream, bravo on a [pool]), each with an access log, and
 * --stats; its upstreams are loopback ports nobody needs to listen on. */
static void write_good(const struct cfile *f, struct good *g)
{
	g->pa = free_port();
	do
		g->pb = free_port();
	while (g->pb == g->pa);
	do
		g->stats = free_port();
	while (g->stats == g->pa || g->stats == g->pb);
	snprintf(g->alog_a, sizeof(g->alog_a), "%s/alpha.log", f->dir);
	snprintf(g->alog_b, sizeof(g->alog_b), "%s/bravo.log", f->dir);
	file_write_atomic(f->path,
			  "# written by test_check.c\n"
			  "workers 2\n"
			  "stats 127.0.0.1:%u\n"
			  "idle-timeout 60000\n"
			  "\n"
			  "[pool shared]\n"
			  "upstream 127.0.0.1:9,weight=2\n"
			  "upstream 127.0.0.1:7\n"
			  "balance leastconn\n"
			  "\n"
			  "[listener alpha]\n"
			  "listen 127.0.0.1:%u\n"
			  "upstream 127.0.0.1:9\n"
			  "idle-timeout 300\n"
			  "access-log %s\n"
			  "\n"
			  "[listener bravo]\n"
			  "listen 127.0.0.1:%u\n"
			  "pool shared\n"
			  "access-log %s\n"
			  "log-format json\n",
			  g->stats, g->pa, g->alog_a, g->pb, g->alog_b);
}

/* The line of s holding needle (malloc'd), or NULL. */
static char *line_holding(const char *s, const char *needle)
{
	const char *hit = strstr(s, needle), *start, *end;

	if (!hit)
		return NULL;
	for (start = hit; start > s && start[-1] != '\n'; start--)
		;
	end = strchr(hit, '\n');
	return strndup(start, end ? (size_t)(end - start) : strlen(start));
}

/* ---- good input ------------------------------------------------------------- */

/* A good file: OK, exit 0 within 1 s, no port bound, no access-log file created. */
Test(check, good_file_ok, .timeout = 30, .fini = conf_dir_remove)
{
	struct cfile f;
	struct good g;
	struct run_result r;

	cfile_init(&f);
	write_good(&f, &g);
	run(&r, (const char *const[]){ "--check", "--config", f.path, NULL }, "a good file");
	expect_ok(&r, "a good file");
	/* it bound nothing and created nothing */
	expect_port_free(g.pa, "alpha's port");
	expect_port_free(g.pb, "bravo's port");
	expect_port_free(g.stats, "the stats port");
	cr_assert(!file_exists(g.alog_a), "--check created alpha's access log %s", g.alog_a);
	cr_assert(!file_exists(g.alog_b), "--check created bravo's access log %s", g.alog_b);
	run_result_free(&r);
}

/* Its ports held by another process: still OK (nothing is bound or connected). */
Test(check, ports_held_still_ok, .timeout = 30, .fini = conf_dir_remove)
{
	struct cfile f;
	struct good g;
	struct run_result r;
	int held[3];
	uint16_t *ports[3] = { &g.pa, &g.pb, &g.stats };

	cfile_init(&f);
	/* another process (this one) holds every address of the file */
	for (int attempt = 0;; attempt++) {
		bool all = true;

		write_good(&f, &g);
		for (int i = 0; i < 3; i++) {
			held[i] = all ? tcp_listen4(INADDR_LOOPBACK, *ports[i]) : -1;
			all &= held[i] >= 0;
		}
		if (all)
			break;
		for (int i = 0; i < 3; i++)
			if (held[i] >= 0)
				close(held[i]);
		cr_assert_lt(attempt, 3, "cannot hold the file's ports: %s", strerror(errno));
	}
	run(&r, (const char *const[]){ "--check", "--config", f.path, NULL },
	    "a good file whose ports another process holds");
	expect_ok(&r, "a good file whose ports another process holds");
	/* and it did not connect to them either */
	for (int i = 0; i < 3; i++) {
		struct pollfd p = { .fd = held[i], .events = POLLIN };

		cr_assert_eq(poll(&p, 1, 0), 0, "--check connected to port %u", *ports[i]);
		close(held[i]);
	}
	run_result_free(&r);
}

/* The command line alone: OK. */
Test(check, command_line_only_ok, .timeout = 30)
{
	char listen[32], up[32];
	struct run_result r;
	uint16_t p = free_port();
	int fd;

	snprintf(listen, sizeof(listen), ":%u", p);
	snprintf(up, sizeof(up), "127.0.0.1:%u", free_port());
	run(&r, (const char *const[]){ "--check", "--listen", listen, "--upstream", up, NULL },
	    "--check --listen :P --upstream 127.0.0.1:Q");
	expect_ok(&r, "--check --listen :P --upstream 127.0.0.1:Q");
	/* ":P" is every address: still free on all of them */
	fd = tcp_listen4(INADDR_ANY, p);
	cr_assert_geq(fd, 0, "cannot bind 0.0.0.0:%u right after --check: %s", p, strerror(errno));
	close(fd);
	run_result_free(&r);
}

/* The command line without an upstream: exit 2 saying so. */
Test(check, command_line_missing_upstream, .timeout = 30)
{
	char listen[32];
	struct run_result r;

	snprintf(listen, sizeof(listen), ":%u", free_port());
	run(&r, (const char *const[]){ "--check", "--listen", listen, NULL },
	    "--check --listen :P without an upstream");
	expect_fail(&r, "--check --listen :P without an upstream");
	cr_assert_not_null(strstr(r.err, "upstream"), "the error does not say what is missing:\n%s",
			   r.err);
	run_result_free(&r);
}

/* A unix: listener: --check creates no socket file. */
Test(check, unix_listener_not_created, .timeout = 30, .fini = conf_dir_remove)
{
	struct cfile f;
	struct run_result r;
	char sock[128];

	cfile_init(&f);
	snprintf(sock, sizeof(sock), "%s/web.sock", f.dir);
	file_write_atomic(f.path,
			  "[listener web]\n"
			  "listen unix:%s\n"
			  "unix-mode 0660\n"
			  "upstream 127.0.0.1:9\n",
			  sock);
	run(&r, (const char *const[]){ "--check", "--config", f.path, NULL },
	    "a unix: listener");
	expect_ok(&r, "a unix: listener");
	cr_assert(!file_exists(sock), "--check created the socket file %s", sock);
	run_result_free(&r);
}

/* The socket file of a running proxy is where --check finds it: it must not remove or replace
 * it as a stale one (reload scripts run --check next to the live proxy). */
Test(check, running_unix_socket_untouched, .timeout = 30, .fini = conf_dir_remove)
{
	struct cfile f;
	struct run_result r;
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct stat before, after;
	int lfd, cfd;

	cfile_init(&f);
	snprintf(a.sun_path, sizeof(a.sun_path), "%s/web.sock", f.dir);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(lfd, 0);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&a, sizeof(a)), 0, "bind %s: %s", a.sun_path,
		     strerror(errno));
	cr_assert_eq(listen(lfd, 8), 0);
	cr_assert_eq(lstat(a.sun_path, &before), 0);
	file_write_atomic(f.path, "[listener web]\nlisten unix:%s\nupstream 127.0.0.1:9\n",
			  a.sun_path);
	run(&r, (const char *const[]){ "--check", "--config", f.path, NULL },
	    "a unix: listener whose path a running process listens on");
	expect_ok(&r, "a unix: listener whose path a running process listens on");
	cr_assert_eq(lstat(a.sun_path, &after), 0, "--check removed the live socket file %s",
		     a.sun_path);
	cr_assert(after.st_ino == before.st_ino && after.st_dev == before.st_dev,
		  "--check replaced the live socket file %s", a.sun_path);
	cfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(connect(cfd, (struct sockaddr *)&a, sizeof(a)), 0, "the live socket %s no "
		     "longer takes connections after --check: %s", a.sun_path, strerror(errno));
	close(cfd);
	close(lfd);
	run_result_free(&r);
}

/* ---- bad input ---------------------------------------------------------------- */

/* Listeners a on host_a:P and b on 127.0.0.1:P (one free port P): --check exits 2 naming
 * both (their section or listen lines) and binds nothing. */
static void expect_two_on_one(const char *host_a, const char *what)
{
	struct cfile f;
	struct run_result r;
	uint16_t p = free_port();

	cfile_init(&f);
	/* lines: 1 comment, 2 [listener a], 3 listen, 4 upstream, 5 blank, 6 [listener b],
	 * 7 listen, 8 upstream */
	file_write_atomic(f.path,
			  "# written by test_check.c\n"
			  "[listener a]\n"
			  "listen %s:%u\n"
			  "upstream 127.0.0.1:9\n"
			  "\n"
			  "[listener b]\n"
			  "listen 127.0.0.1:%u\n"
			  "upstream 127.0.0.1:7\n",
			  host_a, p, p);
	run(&r, (const char *const[]){ "--check", "--config", f.path, NULL }, what);
	expect_fail(&r, what);
	/* each listener named by its section line or its listen line */
	cr_assert(text_names_line(r.err, f.path, 2) || text_names_line(r.err, f.path, 3),
		  "%s: stderr does not name the first listener (%s:2 or :3):\n%s", what, f.path,
		  r.err);
	cr_assert(text_names_line(r.err, f.path, 6) || text_names_line(r.err, f.path, 7),
		  "%s: stderr does not name the second listener (%s:6 or :7):\n%s", what, f.path,
		  r.err);
	expect_port_free(p, what);
	run_result_free(&r);
}

/* Two listeners on one address: exit 2 naming both lines. */
Test(check, duplicate_address, .timeout = 30, .fini = conf_dir_remove)
{
	expect_two_on_one("127.0.0.1", "two listeners on one address");
}

/* One address spelled two ways (localhost:P, 127.0.0.1:P): the text differs, the resolved
 * address does not; exit 2 naming both lines. */
Test(check, duplicate_address_other_spelling, .timeout = 30, .fini = conf_dir_remove)
{
	expect_two_on_one("localhost", "localhost:P and 127.0.0.1:P");
}

/* A --stats host that does not resolve: exit 2 with a line naming --stats and the host (the
 * proxy itself would fail to bind it). */
Test(check, unresolvable_stats, .timeout = 30)
{
	char listen[32], up[32], *line;
	struct run_result r;
	const char *what = "--check --stats nosuch.invalid:9100";

	snprintf(listen, sizeof(listen), "127.0.0.1:%u", free_port());
	snprintf(up, sizeof(up), "127.0.0.1:%u", free_port());
	run(&r,
	    (const char *const[]){ "--check", "--listen", listen, "--upstream", up, "--stats",
				   "nosuch.invalid:9100", NULL },
	    what);
	expect_fail(&r, what);
	line = line_holding(r.err, "nosuch.invalid");
	cr_assert_not_null(line, "%s: stderr does not name the host:\n%s", what, r.err);
	cr_assert_not_null(strstr(line, "--stats"), "%s: the line naming the host does not name "
			   "--stats: %s", what, line);
	free(line);
	run_result_free(&r);
}

/* An unknown key: exit 2 naming file:line and the key. */
Test(check, unknown_key_named, .timeout = 30, .fini = conf_dir_remove)
{
	struct cfile f;
	struct run_result r;

	cfile_init(&f);
	file_write_atomic(f.path,
			  "[listener a]\n"
			  "listen 127.0.0.1:%u\n"
			  "upstream 127.0.0.1:9\n"
			  "frobnicate 7\n",
			  free_port());
	run(&r, (const char *const[]){ "--check", "--config", f.path, NULL },
	    "an unknown key on line 4");
	expect_fail(&r, "an unknown key on line 4");
	cr_assert(text_names_line(r.err, f.path, 4), "stderr does not name %s:4:\n%s", f.path,
		  r.err);
	cr_assert_not_null(strstr(r.err, "frobnicate"), "stderr does not name the key:\n%s", r.err);
	run_result_free(&r);
}

/* An upstream host that does not resolve: exit 2 naming it. */
Test(check, unresolvable_upstream, .timeout = 30, .fini = conf_dir_remove)
{
	struct cfile f;
	struct run_result r;

	cfile_init(&f);
	file_write_atomic(f.path,
			  "[listener a]\n"
			  "listen 127.0.0.1:%u\n"
			  "upstream nonexistent.invalid:80\n",
			  free_port());
	run(&r, (const char *const[]){ "--check", "--config", f.path, NULL },
	    "an upstream host that does not resolve");
	expect_fail(&r, "an upstream host that does not resolve");
	cr_assert_not_null(strstr(r.err, "nonexistent.invalid"), "stderr does not name the "
			   "unresolvable host:\n%s", r.err);
	run_result_free(&r);
}

/* Every resolution failure is its own line: both hosts named, on different lines. */
Test(check, several_unresolvable_upstreams, .timeout = 30, .fini = conf_dir_remove)
{
	struct cfile f;
	struct run_result r;
	char *la, *lb;

	cfile_init(&f);
	file_write_atomic(f.path,
			  "[pool p]\n"
			  "upstream nonexistent-b.invalid:80\n"
			  "\n"
			  "[listener a]\n"
			  "listen 127.0.0.1:%u\n"
			  "upstream nonexistent-a.invalid:80\n"
			  "\n"
			  "[listener b]\n"
			  "listen 127.0.0.1:%u\n"
			  "pool p\n",
			  free_port(), free_port());
	run(&r, (const char *const[]){ "--check", "--config", f.path, NULL },
	    "two upstream hosts that do not resolve");
	expect_fail(&r, "two upstream hosts that do not resolve");
	la = line_holding(r.err, "nonexistent-a.invalid");
	lb = line_holding(r.err, "nonexistent-b.invalid");
	cr_assert_not_null(la, "stderr does not name nonexistent-a.invalid:\n%s", r.err);
	cr_assert_not_null(lb, "stderr does not name nonexistent-b.invalid:\n%s", r.err);
	cr_assert(strstr(la, "nonexistent-b.invalid") == NULL, "both hosts on one line, want one "
		  "line per problem: %s", la);
	free(la);
	free(lb);
	run_result_free(&r);
}

/* Every bad line of the file is its own line on stderr, each naming its FILE:LINE: one run of
 * --check lists them all (without --check the parse stops at the first). Before, --check
 * printed only the first one. */
Test(check, every_bad_line_reported, .timeout = 30, .fini = conf_dir_remove)
{
	static const struct {
		unsigned int line;
		const char *what;
	} bad[] = { { 4, "frobnicate" }, { 5, "idle-timeout" }, { 8, "retries" } };
	struct cfile f;
	struct run_result r;
	char *l;

	cfile_init(&f);
	file_write_atomic(f.path,
			  "[listener a]\n"
			  "listen 127.0.0.1:%u\n"
			  "upstream 127.0.0.1:9\n"
			  "frobnicate 7\n"
			  "idle-timeout soon\n"
			  "[listener b]\n"
			  "listen 127.0.0.1:%u\n"
			  "retries 99\n"
			  "upstream 127.0.0.1:9\n",
			  free_port(), free_port());
	run(&r, (const char *const[]){ "--check", "--config", f.path, NULL }, "three bad lines");
	expect_fail(&r, "three bad lines");
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char at[sizeof(f.path) + 16];

		snprintf(at, sizeof(at), "%s:%u:", f.path, bad[i].line);
		l = line_holding(r.err, at);
		cr_assert_not_null(l, "stderr does not name %s:\n%s", at, r.err);
		cr_assert_not_null(strstr(l, bad[i].what), "the line for %s lacks '%s': %s", at,
				   bad[i].what, l);
		free(l);
	}
	run_result_free(&r);
	/* The same file without --check: one problem (the first), and uproxy does not start. */
	run(&r, (const char *const[]){ "--config", f.path, NULL }, "three bad lines, no --check");
	cr_assert(r.exited && r.code == 2, "exit %d, want 2:\n%s", r.code, r.err);
	l = line_holding(r.err, "frobnicate");
	cr_assert_not_null(l, "stderr lacks the first problem:\n%s", r.err);
	free(l);
	run_result_free(&r);
}
