/* Unit tests for addr: every accepted and rejected "[HOST]:PORT" form, and printing. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <string.h>

#include "uproxy/addr.h"

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
