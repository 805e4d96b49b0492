/* addr: the only place that understands address text. Parsing is pure so that every
 * accepted and rejected form is unit-tested; resolution happens once, at start-up. */
#include "uproxy/addr.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define UNIX_PREFIX	"unix:"
#define UNIX_PREFIX_LEN 5
#define UNIX_PATH_OFF	offsetof(struct sockaddr_un, sun_path)

/* A decimal 1-65535, the whole rest of the string. */
static int parse_port(const char *p, uint16_t *port, const char **why)
{
	unsigned long v = 0;

	if (*p == '\0') {
		*why = "missing port number after ':'";
		return -EINVAL;
	}
	for (const char *c = p; *c; c++) {
		if (!isdigit((unsigned char)*c)) {
			*why = "port is not a number";
			return -EINVAL;
		}
		v = v * 10 + (unsigned long)(*c - '0');
		if (v > 65535) {
			*why = "port out of range (1-65535)";
			return -EINVAL;
		}
	}
	if (v == 0) {
		*why = "port 0 is not allowed (1-65535)";
		return -EINVAL;
	}
	*port = (uint16_t)v;
	return 0;
}

/* Letters, digits, '-', '.', '_' (names and IPv4 literals), 1-253 characters. */
static bool valid_hostname(const char *h)
{
	size_t n = strlen(h);

	if (n == 0 || n > 253)
		return false;
	for (const char *c = h; *c; c++) {
		if (!isalnum((unsigned char)*c) && *c != '-' && *c != '.' && *c != '_')
			return false;
	}
	return true;
}

/* "unix:" seen: an absolute path or "@name", short enough for sun_path, printable. */
static int parse_unix(const char *p, struct hostport *out, const char **why)
{
	size_t n = strlen(p);

	if (n == 0) {
		*why = "empty unix socket path after 'unix:' (write unix:/path or unix:@name)";
		return -EINVAL;
	}
	if (p[0] == '@' && n == 1) {
		*why = "empty abstract socket name after 'unix:@'";
		return -EINVAL;
	}
	if (p[0] != '/' && p[0] != '@') {
		*why = "unix socket path must be absolute (unix:/path) or abstract (unix:@name)";
		return -EINVAL;
	}
	if (n - (p[0] == '@') > ADDR_UNIX_PATH_MAX) {
		*why = "unix socket path too long: at most 107 bytes (the kernel's sun_path holds "
		       "108, with the terminating NUL)";
		return -EINVAL;
	}
	for (const char *c = p; *c; c++) {
		if ((unsigned char)*c < 0x20 || *c == 0x7f || *c == '"' || *c == '\\') {
			*why = "unix socket path contains a control character, '\"' or '\\'";
			return -EINVAL;
		}
	}
	memcpy(out->host, p, n + 1);
	out->unix_sock = true;
	return 0;
}

int addr_parse(const char *s, struct hostport *out, const char **why)
{
	const char *colon;
	size_t hlen;

	memset(out, 0, sizeof(*out));
	if (s == NULL || *s == '\0') {
		*why = "empty address";
		return -EINVAL;
	}
	if (strncmp(s, UNIX_PREFIX, UNIX_PREFIX_LEN) == 0)
		return parse_unix(s + UNIX_PREFIX_LEN, out, why);
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		struct in6_addr tmp;

		if (close == NULL) {
			*why = "missing ']' after IPv6 address";
			return -EINVAL;
		}
		hlen = (size_t)(close - s - 1);
		if (hlen == 0 || hlen >= sizeof(out->host)) {
			*why = "empty or overlong IPv6 address in brackets";
			return -EINVAL;
		}
		memcpy(out->host, s + 1, hlen);
		out->host[hlen] = '\0';
		if (inet_pton(AF_INET6, out->host, &tmp) != 1) {
			*why = "not a valid IPv6 address inside brackets";
			return -EINVAL;
		}
		if (close[1] != ':') {
			*why = close[1] ? "expected ':PORT' after ']'" : "missing ':PORT'";
			return -EINVAL;
		}
		return parse_port(close + 2, &out->port, why);
	}
	colon = strrchr(s, ':');
	if (colon == NULL) {
		*why = "missing ':PORT'";
		return -EINVAL;
	}
	if (memchr(s, ':', (size_t)(colon - s)) != NULL) {
		*why = "IPv6 addresses must be written in brackets, as [::1]:PORT";
		return -EINVAL;
	}
	hlen = (size_t)(colon - s);
	if (hlen == 0 || (hlen == 1 && s[0] == '*')) {
		out->any = true;
	} else {
		if (hlen >= sizeof(out->host)) {
			*why = "host name too long";
			return -EINVAL;
		}
		memcpy(out->host, s, hlen);
		out->host[hlen] = '\0';
		if (!valid_hostname(out->host)) {
			*why = "host contains characters not allowed in a name or address";
			return -EINVAL;
		}
	}
	return parse_port(colon + 1, &out->port, why);
}

/* A unix hostport as its one sockaddr_un: a path with its NUL counted in the length (what
 * getsockname reports back), an abstract name after a leading NUL and without a trailing one
 * (the length delimits it, and a NUL in it would be part of the name). */
static void unix_sockaddr(const struct hostport *hp, struct addr *a)
{
	size_t n = strlen(hp->host);

	memset(a, 0, sizeof(*a));
	a->u.un.sun_family = AF_UNIX;
	if (hp->host[0] == '@') {
		memcpy(a->u.un.sun_path + 1, hp->host + 1, n - 1); /* sun_path[0] stays NUL */
		a->len = (socklen_t)(UNIX_PATH_OFF + n);
	} else {
		memcpy(a->u.un.sun_path, hp->host, n + 1);
		a->len = (socklen_t)(UNIX_PATH_OFF + n + 1);
	}
}

int addr_resolve(const struct hostport *hp, struct addr *out, int max, char *why, size_t whylen)
{
	struct addrinfo hints = { 0 }, *res = NULL, *ai;
	char port[8];
	int n = 0, rc;

	if (hp->unix_sock) {
		struct hostport check;
		const char *bad = NULL;
		char text[ADDR_HOST_MAX + UNIX_PREFIX_LEN];

		/* Not from addr_parse (a hand-made hostport): the same rules, or no sockaddr. */
		snprintf(text, sizeof(text), UNIX_PREFIX "%s", hp->host);
		if (max < 1 || parse_unix(text + UNIX_PREFIX_LEN, &check, &bad) < 0) {
			snprintf(why, whylen, "%s: %.*s%s", bad ? bad : "no room for an address",
				 (int)ADDR_UNIX_PATH_MAX, text,
				 strlen(text) > ADDR_UNIX_PATH_MAX ? "..." : "");
			return -1;
		}
		unix_sockaddr(hp, &out[0]);
		return 1;
	}

	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	snprintf(port, sizeof(port), "%u", hp->port);
	rc = getaddrinfo(hp->host, port, &hints, &res);
	if (rc != 0) {
		snprintf(why, whylen, "cannot resolve host '%s': %s", hp->host,
			 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL && n < max; ai = ai->ai_next) {
		bool dup = false;

		if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6)
			continue;
		addr_from_sockaddr(&out[n], ai->ai_addr, ai->ai_addrlen);
		for (int i = 0; i < n && !dup; i++)
			dup = addr_equal(&out[i], &out[n]);
		if (!dup)
			n++;
	}
	freeaddrinfo(res);
	if (n == 0) {
		snprintf(why, whylen, "host '%s' has no IPv4 or IPv6 address", hp->host);
		return -1;
	}
	return n;
}

/* Copies at most sizeof(a->u) bytes: a longer sockaddr cannot name anything we handle. */
void addr_from_sockaddr(struct addr *a, const struct sockaddr *sa, socklen_t len)
{
	memset(a, 0, sizeof(*a));
	if (len > sizeof(a->u))
		len = sizeof(a->u);
	memcpy(&a->u, sa, len);
	a->len = len;
}

/* An AF_UNIX address's name: *abstract or a path, its bytes in *name, *n of them (0: unnamed).
 * A path ends at its first NUL or at the address's length, whichever comes first. */
static void unix_name(const struct addr *a, bool *abstract, const char **name, size_t *n)
{
	size_t room = a->len > UNIX_PATH_OFF ? a->len - UNIX_PATH_OFF : 0;

	if (room > sizeof(a->u.un.sun_path))
		room = sizeof(a->u.un.sun_path);
	*abstract = room > 0 && a->u.un.sun_path[0] == '\0';
	if (*abstract) {
		*name = a->u.un.sun_path + 1;
		*n = room - 1;
	} else {
		*name = a->u.un.sun_path;
		*n = strnlen(a->u.un.sun_path, room);
	}
}

bool addr_equal(const struct addr *a, const struct addr *b)
{
	if (a->u.sa.sa_family != b->u.sa.sa_family)
		return false;
	if (a->u.sa.sa_family == AF_INET)
		return a->u.in4.sin_port == b->u.in4.sin_port &&
		       a->u.in4.sin_addr.s_addr == b->u.in4.sin_addr.s_addr;
	if (a->u.sa.sa_family == AF_INET6)
		return a->u.in6.sin6_port == b->u.in6.sin6_port &&
		       a->u.in6.sin6_scope_id == b->u.in6.sin6_scope_id &&
		       memcmp(&a->u.in6.sin6_addr, &b->u.in6.sin6_addr, 16) == 0;
	if (a->u.sa.sa_family == AF_UNIX) {
		const char *na, *nb;
		size_t la, lb;
		bool aa, ab;

		unix_name(a, &aa, &na, &la);
		unix_name(b, &ab, &nb, &lb);
		return aa == ab && la == lb && memcmp(na, nb, la) == 0;
	}
	return a->len == b->len && memcmp(&a->u, &b->u, a->len) == 0;
}

/* "unix:/path", "unix:@name" (non-printable bytes as '?') or "unix:" for an unnamed socket. */
static void format_unix(const struct addr *a, char *buf, size_t len)
{
	char name[ADDR_UNIX_PATH_MAX + 1];
	const char *p;
	size_t n;
	bool abstract;

	unix_name(a, &abstract, &p, &n);
	if (n > ADDR_UNIX_PATH_MAX)
		n = ADDR_UNIX_PATH_MAX;
	for (size_t i = 0; i < n; i++)
		name[i] = p[i] >= 0x20 && p[i] < 0x7f ? p[i] : '?';
	name[n] = '\0';
	snprintf(buf, len, UNIX_PREFIX "%s%s", abstract ? "@" : "", name);
}

const char *addr_format(const struct addr *a, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	switch (a->u.sa.sa_family) {
	case AF_INET:
		inet_ntop(AF_INET, &a->u.in4.sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(a->u.in4.sin_port));
		break;
	case AF_INET6:
		inet_ntop(AF_INET6, &a->u.in6.sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(a->u.in6.sin6_port));
		break;
	case AF_UNIX:
		format_unix(a, buf, len);
		break;
	default:
		snprintf(buf, len, "(unknown family %d)", a->u.sa.sa_family);
	}
	return buf;
}

const char *addr_format_hostport(const struct hostport *hp, char *buf, size_t len)
{
	if (hp->unix_sock)
		snprintf(buf, len, UNIX_PREFIX "%s", hp->host);
	else if (hp->any)
		snprintf(buf, len, ":%u", hp->port);
	else if (strchr(hp->host, ':'))
		snprintf(buf, len, "[%s]:%u", hp->host, hp->port);
	else
		snprintf(buf, len, "%s:%u", hp->host, hp->port);
	return buf;
}
