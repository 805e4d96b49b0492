/* Unit tests for addr: every accepted and rejected "[HOST]:PORT" and "unix:" form, printing,
 * and the one address equality (addr_equal); then what listener.c does with a unix: address
 * (stale files, live owners, mode, removal, dups), which needs no proxy to check. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "uproxy/addr.h"
#include "uproxy/listener.h"

static void ok(const char *s, const char *host, unsigned port, bool any)
{
	struct hostport hp;
	const char *why = NULL;

	cr_assert_eq(addr_parse(s, &hp, &why), 0, "'%s' rejected: %s", s, why ? why : "");
	cr_assert_str_eq(hp.host, host, "'%s' host", s);
	cr_assert_eq(hp.port, port, "'%s' port", s);
	cr_assert_eq(hp.any, any, "'%s' any", s);
}

static void bad(const char *s, const char *needle)
{
	struct hostport hp;
	const char *why = NULL;

	cr_assert_lt(addr_parse(s, &hp, &why), 0, "'%s' accepted", s);
	cr_assert_not_null(why);
	cr_assert(strstr(why, needle) != NULL, "'%s': reason '%s' lacks '%s'", s, why, needle);
}

Test(addr, parses_host_port)
{
	ok("127.0.0.1:80", "127.0.0.1", 80, false);
	ok("localhost:8080", "localhost", 8080, false);
	ok("backend-1.example.com:65535", "backend-1.example.com", 65535, false);
	ok("a:1", "a", 1, false);
}

Test(addr, parses_any)
{
	ok(":8080", "", 8080, true);
	ok("*:8080", "", 8080, true);
}

Test(addr, parses_ipv6_in_brackets)
{
	ok("[::1]:443", "::1", 443, false);
	ok("[::]:80", "::", 80, false);
	ok("[2001:db8::1]:9000", "2001:db8::1", 9000, false);
}

Test(addr, rejects_bad_ports)
{
	bad("127.0.0.1:0", "port 0");
	bad("127.0.0.1:65536", "out of range");
	bad("127.0.0.1:99999999999", "out of range");
	bad("127.0.0.1:", "missing port");
	bad("127.0.0.1:http", "not a number");
	bad("127.0.0.1:-1", "not a number");
	bad("127.0.0.1: 80", "not a number");
}

Test(addr, rejects_bad_shapes)
{
	bad("", "empty");
	bad("127.0.0.1", "missing ':PORT'");
	bad("::1:80", "brackets");
	bad("[::1", "missing ']'");
	bad("[::1]", "missing ':PORT'");
	bad("[::1]80", "expected ':PORT'");
	bad("[]:80", "empty");
	bad("[zz::1]:80", "not a valid IPv6");
	bad("[127.0.0.1]:80", "not a valid IPv6");
	bad("bad host:80", "characters");
	bad("host/x:80", "characters");
}

Test(addr, rejects_overlong_host)
{
	char s[400];

	memset(s, 'a', 300);
	strcpy(s + 300, ":80");
	bad(s, "too long");
}

Test(addr, formats_v4_and_v6)
{
	struct addr a;
	struct sockaddr_in in4 = { .sin_family = AF_INET, .sin_port = htons(8080) };
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(443) };
	char buf[ADDR_STRLEN];

	inet_pton(AF_INET, "10.1.2.3", &in4.sin_addr);
	addr_from_sockaddr(&a, (struct sockaddr *)&in4, sizeof(in4));
	cr_assert_str_eq(addr_format(&a, buf, sizeof(buf)), "10.1.2.3:8080");
	inet_pton(AF_INET6, "2001:db8::1", &in6.sin6_addr);
	addr_from_sockaddr(&a, (struct sockaddr *)&in6, sizeof(in6));
	cr_assert_str_eq(addr_format(&a, buf, sizeof(buf)), "[2001:db8::1]:443");
}

Test(addr, formats_hostport_round_trip)
{
	const char *forms[] = { ":80", "127.0.0.1:80", "[::1]:80", "example.org:443" };
	char buf[ADDR_STRLEN + ADDR_HOST_MAX];

	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		struct hostport hp;
		const char *why;

		cr_assert_eq(addr_parse(forms[i], &hp, &why), 0);
		cr_assert_str_eq(addr_format_hostport(&hp, buf, sizeof(buf)), forms[i]);
	}
}

Test(addr, resolves_numeric_and_localhost)
{
	struct hostport hp;
	struct addr out[ADDR_MAX_RESOLVED];
	const char *why;
	char err[256], buf[ADDR_STRLEN];

	cr_assert_eq(addr_parse("127.0.0.1:81", &hp, &why), 0);
	cr_assert_eq(addr_resolve(&hp, out, ADDR_MAX_RESOLVED, err, sizeof(err)), 1);
	cr_assert_str_eq(addr_format(&out[0], buf, sizeof(buf)), "127.0.0.1:81");
	cr_assert_eq(addr_parse("localhost:82", &hp, &why), 0);
	cr_assert_gt(addr_resolve(&hp, out, ADDR_MAX_RESOLVED, err, sizeof(err)), 0, "%s", err);
}

Test(addr, resolve_failure_names_the_host)
{
	struct hostport hp;
	struct addr out[4];
	const char *why;
	char err[256];

	cr_assert_eq(addr_parse("no-such-host.invalid:80", &hp, &why), 0);
	cr_assert_lt(addr_resolve(&hp, out, 4, err, sizeof(err)), 0);
	cr_assert(strstr(err, "no-such-host.invalid") != NULL, "%s", err);
}

/* ---- addr_equal: family, address, port and IPv6 scope id; nothing else ---------------- */

static struct addr v4(const char *ip, unsigned port)
{
	struct sockaddr_in in4 = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct addr a;

	cr_assert_eq(inet_pton(AF_INET, ip, &in4.sin_addr), 1, "%s", ip);
	addr_from_sockaddr(&a, (struct sockaddr *)&in4, sizeof(in4));
	return a;
}

static struct addr v6(const char *ip, unsigned port, uint32_t scope, uint32_t flow)
{
	struct sockaddr_in6 in6 = { .sin6_family = AF_INET6, .sin6_port = htons(port),
				    .sin6_scope_id = scope, .sin6_flowinfo = htonl(flow) };
	struct addr a;

	cr_assert_eq(inet_pton(AF_INET6, ip, &in6.sin6_addr), 1, "%s", ip);
	addr_from_sockaddr(&a, (struct sockaddr *)&in6, sizeof(in6));
	return a;
}

/* addr_equal(a, b), checked to be symmetric. */
static bool eq(struct addr a, struct addr b)
{
	bool ab = addr_equal(&a, &b);

	cr_assert_eq(ab, addr_equal(&b, &a), "addr_equal is not symmetric");
	return ab;
}

Test(addr, equal_ipv4_address_and_port)
{
	struct addr a = v4("10.1.2.3", 80), b = v4("10.1.2.3", 80);

	cr_assert(eq(a, a));
	cr_assert(eq(a, b));
	cr_assert_not(eq(a, v4("10.1.2.3", 81)), "the port is part of the address");
	cr_assert_not(eq(a, v4("10.1.2.4", 80)));
	/* sin_zero is padding, not address: garbage there changes nothing */
	memset(b.u.in4.sin_zero, 0xa5, sizeof(b.u.in4.sin_zero));
	cr_assert(eq(a, b), "sin_zero compared");
}

Test(addr, equal_ipv6_address_and_port_not_flow_label)
{
	struct addr a = v6("2001:db8::1", 443, 0, 0);

	cr_assert(eq(a, v6("2001:db8::1", 443, 0, 0)));
	cr_assert_not(eq(a, v6("2001:db8::1", 444, 0, 0)), "the port is part of the address");
	cr_assert_not(eq(a, v6("2001:db8::2", 443, 0, 0)));
	cr_assert_not(eq(a, v6("3001:db8::1", 443, 0, 0)), "first byte differs");
	cr_assert(eq(a, v6("2001:db8::1", 443, 0, 0x12345)), "the flow label is no endpoint");
}

Test(addr, equal_ipv6_scope_id)
{
	/* fe80::1 on two interfaces is two different hosts */
	struct addr a = v6("fe80::1", 80, 2, 0);

	cr_assert(eq(a, v6("fe80::1", 80, 2, 0)));
	cr_assert_not(eq(a, v6("fe80::1", 80, 3, 0)), "scope id ignored");
	cr_assert_not(eq(a, v6("fe80::1", 80, 0, 0)), "scope id ignored");
}

Test(addr, equal_ipv4_is_not_its_v4_mapped_form)
{
	/* different families: a v4 socket and a v6 socket, never the same upstream entry */
	cr_assert_not(eq(v4("127.0.0.1", 80), v6("::ffff:127.0.0.1", 80, 0, 0)));
	cr_assert(eq(v6("::ffff:127.0.0.1", 80, 0, 0), v6("::ffff:127.0.0.1", 80, 0, 0)));
	cr_assert_not(eq(v4("0.0.0.0", 0), v6("::", 0, 0, 0)), "wildcards of two families");
}

Test(addr, equal_zeroed_addresses)
{
	struct addr a, b;

	/* a zeroed struct addr (family 0) is what an unused slot holds: equal to another one,
	 * not to any real address */
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	cr_assert(eq(a, b));
	cr_assert_not(eq(a, v4("0.0.0.0", 0)));
}

/* ---- unix: addresses --------------------------------------------------------------------- */

/* s parses as a unix address whose host is host. */
static void ok_unix(const char *s, const char *host)
{
	struct hostport hp;
	const char *why = NULL;

	cr_assert_eq(addr_parse(s, &hp, &why), 0, "'%s' rejected: %s", s, why ? why : "");
	cr_assert(hp.unix_sock, "'%s' not unix", s);
	cr_assert_str_eq(hp.host, host, "'%s' path", s);
	cr_assert_eq(hp.port, 0, "'%s' port", s);
	cr_assert_not(hp.any, "'%s' any", s);
}

/* A unix address of path bytes (a path, or "@name") with n of them. */
static struct addr un(const char *path, size_t n, socklen_t len)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct addr a;

	memcpy(sa.sun_path, path, n);
	if (path[0] == '@')
		sa.sun_path[0] = '\0';
	addr_from_sockaddr(&a, (struct sockaddr *)&sa, len);
	return a;
}

Test(addr, parses_unix_paths)
{
	char s[300], want[200];

	ok_unix("unix:/run/uproxy/web.sock", "/run/uproxy/web.sock");
	ok_unix("unix:/a", "/a");
	ok_unix("unix:/tmp/with space and:colon,comma", "/tmp/with space and:colon,comma");
	ok_unix("unix:@uproxy-test", "@uproxy-test");
	/* the longest path: 107 bytes, 108 with the NUL that fills sun_path */
	memset(want, 'p', 107);
	want[0] = '/';
	want[107] = '\0';
	snprintf(s, sizeof(s), "unix:%s", want);
	ok_unix(s, want);
	want[0] = '@'; /* an abstract name of 107 bytes after its '@' */
	memset(want + 107, 'p', 1);
	want[108] = '\0';
	snprintf(s, sizeof(s), "unix:%s", want);
	ok_unix(s, want);
}

Test(addr, rejects_bad_unix_paths)
{
	char s[200];

	bad("unix:", "empty unix socket path");
	bad("unix:@", "empty abstract");
	bad("unix:run/x.sock", "must be absolute");
	bad("unix:./x.sock", "must be absolute");
	bad("unix:80", "must be absolute"); /* "unix:" always means a unix socket */
	bad("unix:/a\tb", "control character");
	bad("unix:/a\nb", "control character");
	bad("unix:/a\"b", "control character");
	bad("unix:/a\\b", "control character");
	strcpy(s, "unix:/");
	memset(s + 6, 'p', 107); /* 108 bytes: no room left for the NUL */
	s[6 + 107] = '\0';
	bad(s, "too long");
	strcpy(s, "unix:@");
	memset(s + 6, 'p', 108);
	s[6 + 108] = '\0';
	bad(s, "too long");
	/* a host named like the prefix is still a host without it */
	ok("unixhost:80", "unixhost", 80, false);
}

Test(addr, unix_round_trips_through_hostport_text)
{
	const char *forms[] = { "unix:/run/a.sock", "unix:@abstract", "unix:/x" };
	char buf[ADDR_STRLEN + ADDR_HOST_MAX];

	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		struct hostport hp, back;
		const char *why;

		cr_assert_eq(addr_parse(forms[i], &hp, &why), 0);
		cr_assert_str_eq(addr_format_hostport(&hp, buf, sizeof(buf)), forms[i]);
		cr_assert_eq(addr_parse(buf, &back, &why), 0);
		cr_assert(back.unix_sock && strcmp(back.host, hp.host) == 0);
	}
}

Test(addr, resolves_unix_path_to_one_sockaddr_un)
{
	struct hostport hp;
	struct addr out[ADDR_MAX_RESOLVED];
	const char *why;
	char err[256], buf[ADDR_STRLEN];

	cr_assert_eq(addr_parse("unix:/run/uproxy/web.sock", &hp, &why), 0);
	cr_assert_eq(addr_resolve(&hp, out, ADDR_MAX_RESOLVED, err, sizeof(err)), 1, "%s", err);
	cr_assert_eq(out[0].u.un.sun_family, AF_UNIX);
	cr_assert_str_eq(out[0].u.un.sun_path, "/run/uproxy/web.sock");
	/* what bind(2) wants and getsockname(2) gives back: the path and its NUL */
	cr_assert_eq(out[0].len, offsetof(struct sockaddr_un, sun_path) + 20 + 1);
	cr_assert_str_eq(addr_format(&out[0], buf, sizeof(buf)), "unix:/run/uproxy/web.sock");
}

Test(addr, resolves_abstract_name_without_nul)
{
	struct hostport hp;
	struct addr out[1];
	const char *why;
	char err[256], buf[ADDR_STRLEN];

	cr_assert_eq(addr_parse("unix:@uproxy", &hp, &why), 0);
	cr_assert_eq(addr_resolve(&hp, out, 1, err, sizeof(err)), 1, "%s", err);
	cr_assert_eq(out[0].u.un.sun_path[0], '\0');
	cr_assert_eq(memcmp(out[0].u.un.sun_path + 1, "uproxy", 6), 0);
	/* the length delimits an abstract name: a NUL would be part of it */
	cr_assert_eq(out[0].len, offsetof(struct sockaddr_un, sun_path) + 1 + 6);
	cr_assert_str_eq(addr_format(&out[0], buf, sizeof(buf)), "unix:@uproxy");
}

Test(addr, resolve_refuses_a_hand_made_bad_unix_hostport)
{
	struct hostport hp = { .unix_sock = true };
	struct addr out[1];
	char err[256];

	strcpy(hp.host, "relative.sock");
	cr_assert_lt(addr_resolve(&hp, out, 1, err, sizeof(err)), 0);
	cr_assert(strstr(err, "unix:relative.sock") && strstr(err, "absolute"), "%s", err);
	memset(hp.host, 'p', 200); /* longer than sun_path */
	hp.host[0] = '/';
	hp.host[200] = '\0';
	cr_assert_lt(addr_resolve(&hp, out, 1, err, sizeof(err)), 0);
	cr_assert(strstr(err, "too long"), "%s", err);
	strcpy(hp.host, "/ok");
	cr_assert_lt(addr_resolve(&hp, out, 0, err, sizeof(err)), 0, "max 0 has no room");
}

Test(addr, formats_unnamed_unix_peer)
{
	struct addr a;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char buf[ADDR_STRLEN];

	/* accept(2)/getpeername(2) of a client that did not bind: the family alone */
	addr_from_sockaddr(&a, (struct sockaddr *)&sa, sizeof(sa_family_t));
	cr_assert_str_eq(addr_format(&a, buf, sizeof(buf)), "unix:");
}

Test(addr, formats_longest_unix_names_whole)
{
	char path[ADDR_UNIX_PATH_MAX + 2], want[ADDR_STRLEN], buf[ADDR_STRLEN];
	struct addr a;

	memset(path, 'q', sizeof(path));
	path[0] = '/';
	a = un(path, ADDR_UNIX_PATH_MAX, offsetof(struct sockaddr_un, sun_path) + 108);
	snprintf(want, sizeof(want), "unix:%.*s", (int)ADDR_UNIX_PATH_MAX, path);
	cr_assert_str_eq(addr_format(&a, buf, sizeof(buf)), want);
	path[0] = '@';
	a = un(path, 108, offsetof(struct sockaddr_un, sun_path) + 108);
	snprintf(want, sizeof(want), "unix:@%.*s", (int)ADDR_UNIX_PATH_MAX, path + 1);
	cr_assert_str_eq(addr_format(&a, buf, sizeof(buf)), want);
	cr_assert_eq(strlen(buf) + 1, ADDR_STRLEN, "ADDR_STRLEN is exactly the longest form");
	/* a non-printable byte of an abstract name someone else bound prints as '?' */
	a = un("@a\001b", 4, offsetof(struct sockaddr_un, sun_path) + 4);
	cr_assert_str_eq(addr_format(&a, buf, sizeof(buf)), "unix:@a?b");
}

Test(addr, equal_unix_paths)
{
	size_t off = offsetof(struct sockaddr_un, sun_path);
	struct addr a = un("/run/a.sock", 12, (socklen_t)(off + 12));

	cr_assert(eq(a, a));
	/* getsockname may count the NUL or not, or report sizeof(struct sockaddr_un) */
	cr_assert(eq(a, un("/run/a.sock", 11, (socklen_t)(off + 11))));
	cr_assert(eq(a, un("/run/a.sock", 12, sizeof(struct sockaddr_un))));
	cr_assert_not(eq(a, un("/run/b.sock", 12, (socklen_t)(off + 12))));
	cr_assert_not(eq(a, un("/run/a.soc", 11, (socklen_t)(off + 11))), "a prefix");
	/* an abstract name is not the path with the same bytes */
	cr_assert_not(eq(un("@run", 4, (socklen_t)(off + 4)), un("/run", 5, (socklen_t)(off + 5))));
	cr_assert(eq(un("@x", 2, (socklen_t)(off + 2)), un("@x", 2, (socklen_t)(off + 2))));
	/* abstract names are delimited by the length: "@x" and "@x\0" are two names */
	cr_assert_not(eq(un("@x", 2, (socklen_t)(off + 2)), un("@x", 3, (socklen_t)(off + 3))));
	/* two unnamed peers are alike; an unnamed one is not a named one */
	cr_assert(eq(un("", 0, sizeof(sa_family_t)), un("", 0, sizeof(sa_family_t))));
	cr_assert_not(eq(un("", 0, sizeof(sa_family_t)), a));
	cr_assert_not(eq(a, v4("127.0.0.1", 80)), "families differ");
}

/* ---- listener: unix sockets --------------------------------------------------------------- */

static char tdir[64];

/* A private directory per test under /tmp (the .init), removed with what is left in it. */
static void tdir_make(void)
{
	strcpy(tdir, "/tmp/uproxy-unit-unix-XXXXXX");
	cr_assert_not_null(mkdtemp(tdir), "mkdtemp: %s", strerror(errno));
}

static void tdir_remove(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tdir);
	if (tdir[0] != '\0' && system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tdir);
}

/* path := tdir/name, and its hostport. */
static struct hostport tpath(const char *name, char *path, size_t len)
{
	struct hostport hp;
	const char *why = NULL;
	char s[160];

	snprintf(path, len, "%s/%s", tdir, name);
	snprintf(s, sizeof(s), "unix:%s", path);
	cr_assert_eq(addr_parse(s, &hp, &why), 0, "%s: %s", s, why ? why : "");
	return hp;
}

/* A socket bound to path; listening when listening. */
static int raw_bind(const char *path, bool listening)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	strcpy(sa.sun_path, path);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "bind %s: %s", path,
		     strerror(errno));
	if (listening)
		cr_assert_eq(listen(fd, 8), 0);
	return fd;
}

/* A blocking connect to path: 0 or -errno. The connected fd goes to *out (or is closed). */
static int raw_connect(const struct sockaddr *sa, socklen_t len, int *out)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), rc;

	cr_assert_geq(fd, 0);
	rc = connect(fd, sa, len) == 0 ? 0 : -errno;
	if (rc == 0 && out != NULL)
		*out = fd;
	else
		close(fd);
	return rc;
}

/* Accepts one connection on fd within 1 s: true if one was there. */
static bool accepts_one(int fd)
{
	int c;

	for (int i = 0; i < 100; i++) {
		c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (c >= 0) {
			close(c);
			return true;
		}
		if (errno != EAGAIN)
			return false;
		usleep(10000);
	}
	return false;
}

static mode_t mode_of(const char *path)
{
	struct stat st;

	cr_assert_eq(lstat(path, &st), 0, "lstat %s: %s", path, strerror(errno));
	return st.st_mode;
}

Test(listener_unix, binds_a_fresh_path_with_exactly_the_mode, .init = tdir_make,
     .fini = tdir_remove)
{
	char path[128], why[256];
	struct hostport hp = tpath("l.sock", path, sizeof(path));
	struct listener l;
	mode_t old = umask(0077); /* strips group/other: only the chmod after bind restores them */

	cr_assert_eq(listener_open_unix(&hp, 0660, &l, why, sizeof(why)), 1, "%s", why);
	umask(old);
	cr_assert(S_ISSOCK(mode_of(path)));
	cr_assert_eq(mode_of(path) & 07777, 0660, "mode %04o", mode_of(path) & 07777);
	cr_assert(l.unix_file);
	cr_assert_eq(l.addr.u.sa.sa_family, AF_UNIX);
	cr_assert_str_eq(l.addr.u.un.sun_path, path);
	cr_assert_eq(raw_connect(&l.addr.u.sa, l.addr.len, NULL), 0);
	cr_assert(accepts_one(l.fd), "listening");
	close(l.fd);
	cr_assert_eq(listener_unlink(&l), 1);
	cr_assert_eq(access(path, F_OK), -1, "removed");
}

Test(listener_unix, mode_0_leaves_the_umask_alone, .init = tdir_make, .fini = tdir_remove)
{
	char path[128], why[256];
	struct hostport hp = tpath("l.sock", path, sizeof(path));
	struct listener l;
	mode_t old = umask(0027);

	cr_assert_eq(listener_open(&hp, &l, 4, why, sizeof(why)), 1, "%s", why);
	umask(old);
	cr_assert_eq(mode_of(path) & 0777, 0750, "mode %04o", mode_of(path) & 0777);
	close(l.fd);
	listener_unlink(&l);
}

/* The race-freedom of the mode rests on this kernel behaviour: a socket fchmod()ed before bind
 * creates its file with that mode (minus the umask), so the file is never more open than the
 * mode asked for, not even between bind and chmod. */
Test(listener_unix, kernel_applies_fchmod_before_bind, .init = tdir_make, .fini = tdir_remove)
{
	char path[128];
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	mode_t old = umask(0);

	snprintf(path, sizeof(path), "%s/raw.sock", tdir);
	strcpy(sa.sun_path, path);
	cr_assert_eq(fchmod(fd, 0600), 0, "fchmod: %s", strerror(errno));
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	umask(old);
	cr_assert_eq(mode_of(path) & 0777, 0600, "mode %04o with umask 0",
		     mode_of(path) & 0777);
	close(fd);
}

Test(listener_unix, replaces_a_stale_socket_file, .init = tdir_make, .fini = tdir_remove)
{
	char path[128], why[256];
	struct hostport hp = tpath("l.sock", path, sizeof(path));
	struct listener l;
	struct stat after;

	/* what a killed process leaves: the file, and nothing listening behind it */
	close(raw_bind(path, true));
	cr_assert_eq(listener_open_unix(&hp, 0600, &l, why, sizeof(why)), 1, "%s", why);
	/* a new socket file (its inode number may be the old one's: file systems reuse them) */
	cr_assert_eq(lstat(path, &after), 0);
	cr_assert(S_ISSOCK(after.st_mode));
	cr_assert_eq(after.st_mode & 07777, 0600);
	cr_assert(l.unix_file);
	cr_assert_eq(after.st_ino, l.unix_id.ino);
	cr_assert_eq(raw_connect(&l.addr.u.sa, l.addr.len, NULL), 0);
	cr_assert(accepts_one(l.fd));
	close(l.fd);
	listener_unlink(&l);
}

Test(listener_unix, refuses_a_path_a_live_process_listens_on, .init = tdir_make,
     .fini = tdir_remove)
{
	char path[128], why[256], want[200];
	struct hostport hp = tpath("l.sock", path, sizeof(path));
	struct listener l;
	int owner = raw_bind(path, true), fill[16], nfill = 0;
	struct stat before, after;

	cr_assert_eq(lstat(path, &before), 0);
	snprintf(want, sizeof(want), "unix:%s is in use by another process", path);
	cr_assert_eq(listener_open_unix(&hp, 0600, &l, why, sizeof(why)), -1);
	cr_assert_str_eq(why, want);
	/* a live owner with a full backlog must not block the check, nor pass for stale */
	for (int i = 0; i < 16; i++) {
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		struct sockaddr_un sa = { .sun_family = AF_UNIX };

		strcpy(sa.sun_path, path);
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			close(fd);
			break;
		}
		fill[nfill++] = fd;
	}
	cr_assert_lt(nfill, 16, "the backlog of 8 never filled");
	cr_assert_eq(listener_open_unix(&hp, 0600, &l, why, sizeof(why)), -1);
	cr_assert_str_eq(why, want);
	cr_assert_eq(lstat(path, &after), 0);
	cr_assert_eq(before.st_ino, after.st_ino, "the owner's file was touched");
	while (nfill > 0)
		close(fill[--nfill]);
	cr_assert(accepts_one(owner), "the owner still serves");
	close(owner);
}

Test(listener_unix, leaves_a_regular_file_alone, .init = tdir_make, .fini = tdir_remove)
{
	char path[128], why[256], buf[32] = { 0 };
	struct hostport hp = tpath("l.sock", path, sizeof(path));
	struct listener l;
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, "precious\n", 9), 9);
	close(fd);
	cr_assert_eq(listener_open_unix(&hp, 0600, &l, why, sizeof(why)), -1);
	cr_assert(strstr(why, path) && strstr(why, "is not a socket"), "%s", why);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	cr_assert_geq(fd, 0);
	cr_assert_eq(read(fd, buf, sizeof(buf)), 9);
	close(fd);
	cr_assert_str_eq(buf, "precious\n");
	cr_assert_eq(mode_of(path) & 07777, 0644);
	cr_assert_eq(mkdir(strcat(path, ".d"), 0755), 0); /* nor a directory */
	hp = tpath("l.sock.d", path, sizeof(path));
	cr_assert_eq(listener_open_unix(&hp, 0600, &l, why, sizeof(why)), -1);
	cr_assert(strstr(why, "is not a socket"), "%s", why);
}

Test(listener_unix, says_why_the_directory_is_unusable, .init = tdir_make, .fini = tdir_remove)
{
	char path[128], why[256];
	struct hostport hp = tpath("no-such-dir/l.sock", path, sizeof(path));
	struct listener l;

	cr_assert_eq(listener_open_unix(&hp, 0600, &l, why, sizeof(why)), -1);
	cr_assert(strstr(why, path) && strstr(why, "directory does not exist"), "%s", why);
}

Test(listener_unix, unlinks_only_its_own_file, .init = tdir_make, .fini = tdir_remove)
{
	char path[128], why[256];
	struct hostport hp = tpath("l.sock", path, sizeof(path));
	struct listener l, dup;
	int other;

	cr_assert_eq(listener_open_unix(&hp, 0600, &l, why, sizeof(why)), 1, "%s", why);
	cr_assert_eq(listener_dup(&l, &dup, why, sizeof(why)), 0, "%s", why);
	close(l.fd);
	close(dup.fd);
	/* a newer process replaced the file (removed ours, bound its own): not ours to remove,
	 * even when the new file got our inode number back (ext4 and tmpfs reuse it at once) */
	cr_assert_eq(unlink(path), 0);
	other = raw_bind(path, true);
	cr_assert_eq(listener_unlink(&l), 0);
	cr_assert_eq(listener_unlink(&dup), 0);
	cr_assert(S_ISSOCK(mode_of(path)), "the other process's socket was removed");
	close(other);
	cr_assert_eq(unlink(path), 0);
	/* ours, still there: removed once, from any copy; then nothing left to do */
	cr_assert_eq(listener_open_unix(&hp, 0600, &l, why, sizeof(why)), 1, "%s", why);
	cr_assert_eq(listener_dup(&l, &dup, why, sizeof(why)), 0, "%s", why);
	close(l.fd);
	close(dup.fd);
	cr_assert_eq(listener_unlink(&dup), 1);
	cr_assert_eq(access(path, F_OK), -1);
	cr_assert_eq(listener_unlink(&l), 0);
	/* a regular file put at the path meanwhile is not a socket: left alone */
	cr_assert_eq(listener_open_unix(&hp, 0600, &l, why, sizeof(why)), 1, "%s", why);
	close(l.fd);
	cr_assert_eq(unlink(path), 0);
	close(open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
	cr_assert_eq(listener_unlink(&l), 0);
	cr_assert(S_ISREG(mode_of(path)));
}

Test(listener_unix, dups_share_one_accept_queue, .init = tdir_make, .fini = tdir_remove)
{
	char path[128], why[256];
	struct hostport hp = tpath("l.sock", path, sizeof(path));
	struct listener l, d1, d2;

	cr_assert_eq(listener_open_unix(&hp, 0600, &l, why, sizeof(why)), 1, "%s", why);
	l.multi_armed = true; /* per-worker state is not copied */
	cr_assert_eq(listener_dup(&l, &d1, why, sizeof(why)), 0, "%s", why);
	cr_assert_eq(listener_dup(&l, &d2, why, sizeof(why)), 0, "%s", why);
	cr_assert_not(d1.multi_armed);
	cr_assert_neq(d1.fd, l.fd);
	cr_assert(fcntl(d1.fd, F_GETFD) & FD_CLOEXEC);
	cr_assert(addr_equal(&d1.addr, &l.addr));
	/* main closes its original once the workers have theirs: they still accept */
	close(l.fd);
	cr_assert_eq(raw_connect(&d1.addr.u.sa, d1.addr.len, NULL), 0);
	cr_assert(accepts_one(d2.fd), "a connection is accepted from any dup");
	close(d2.fd);
	cr_assert_eq(raw_connect(&d1.addr.u.sa, d1.addr.len, NULL), 0);
	cr_assert(accepts_one(d1.fd));
	close(d1.fd);
	/* the last one closed: connects are refused, the file stays until unlinked */
	cr_assert_eq(raw_connect(&d1.addr.u.sa, d1.addr.len, NULL), -ECONNREFUSED);
	cr_assert_eq(listener_unlink(&d1), 1);
}

Test(listener_unix, abstract_names_have_no_file)
{
	char name[64], why[256];
	struct hostport hp;
	struct listener l, again;
	const char *w = NULL;

	snprintf(name, sizeof(name), "unix:@uproxy-unit-%d", (int)getpid());
	cr_assert_eq(addr_parse(name, &hp, &w), 0);
	cr_assert_eq(listener_open_unix(&hp, 0600, &l, why, sizeof(why)), 1, "%s", why);
	cr_assert_not(l.unix_file);
	cr_assert_eq(raw_connect(&l.addr.u.sa, l.addr.len, NULL), 0);
	cr_assert(accepts_one(l.fd));
	cr_assert_eq(listener_open_unix(&hp, 0600, &again, why, sizeof(why)), -1);
	cr_assert(strstr(why, name + 5) && strstr(why, "in use by another process"), "%s", why);
	cr_assert_eq(listener_unlink(&l), 0);
	close(l.fd);
}

Test(listener_unix, adopted_unix_sockets_are_never_unlinked, .init = tdir_make,
     .fini = tdir_remove)
{
	char path[128], why[256], buf[ADDR_STRLEN], want[160];
	struct listener l;
	int fd;

	snprintf(path, sizeof(path), "%s/activated.sock", tdir);
	fd = raw_bind(path, true);
	cr_assert_eq(listener_adopt(&fd, 1, true, &l, why, sizeof(why)), 1, "%s", why);
	snprintf(want, sizeof(want), "unix:%s", path);
	cr_assert_str_eq(addr_format(&l.addr, buf, sizeof(buf)), want);
	cr_assert_not(l.unix_file);
	cr_assert_eq(listener_unlink(&l), 0);
	cr_assert(S_ISSOCK(mode_of(path)));
	close(fd);
}
