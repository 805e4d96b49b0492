/* TEMPORARY weak stand-ins until the guard, sni, unix and backup branches are merged. */
#include <arpa/inet.h>
#include <stdbool.h>
#include <string.h>

#include "uproxy/acl.h"
#include "uproxy/backend.h"
#include "uproxy/climit.h"
#include "uproxy/config.h"
#include "uproxy/listener.h"
#include "uproxy/sni.h"
#include "uproxy/steer.h"

__attribute__((weak)) int acl_parse(const char *s, bool allow, struct config_cidr *out,
				    const char **why)
{
	memset(out, 0, sizeof(*out));
	out->allow = allow;
	if (strcmp(s, "all") == 0) {
		out->family = AF_UNSPEC;
		return 0;
	}
	*why = "acl not built yet";
	return -1;
}
__attribute__((weak)) bool acl_allows(const struct config_cidr *acl, uint32_t n,
				      const struct sockaddr *sa)
{
	(void)sa;
	return n == 0 || acl[0].allow;
}
__attribute__((weak)) int sni_pattern_check(const char *p, const char **why)
{
	(void)p;
	(void)why;
	return 0;
}
__attribute__((weak)) enum sni_result sni_parse(const uint8_t *b, size_t l, char *n, size_t nl)
{
	(void)b;
	(void)l;
	(void)n;
	(void)nl;
	return SNI_NOT_TLS;
}
__attribute__((weak)) const char *sni_result_name(enum sni_result r)
{
	(void)r;
	return "?";
}
__attribute__((weak)) int sni_route_match(const struct config_sni_route *r, uint32_t n,
					  const char *name)
{
	(void)r;
	(void)n;
	(void)name;
	return -1;
}
__attribute__((weak)) int steer_attach(int fd, unsigned int n, int f, char *why, size_t wl)
{
	(void)fd;
	(void)n;
	(void)f;
	(void)why;
	(void)wl;
	return 0;
}
__attribute__((weak)) struct climit *climit_new(uint32_t e, uint32_t m, uint32_t r, uint32_t b,
						bool f)
{
	(void)e;
	(void)m;
	(void)r;
	(void)b;
	(void)f;
	return NULL;
}
__attribute__((weak)) void climit_free(struct climit *c)
{
	(void)c;
}
__attribute__((weak)) void climit_set_limits(struct climit *c, uint32_t m, uint32_t r, uint32_t b,
					     bool f)
{
	(void)c;
	(void)m;
	(void)r;
	(void)b;
	(void)f;
}
__attribute__((weak)) uint32_t climit_held(const struct climit *c)
{
	(void)c;
	return 0;
}
__attribute__((weak)) enum climit_verdict climit_admit(struct climit *c, const struct sockaddr *sa,
						       uint64_t now, uint32_t *slot)
{
	(void)c;
	(void)sa;
	(void)now;
	*slot = CLIMIT_NO_SLOT;
	return CLIMIT_OK;
}
__attribute__((weak)) void climit_release(struct climit *c, uint32_t s)
{
	(void)c;
	(void)s;
}
__attribute__((weak)) bool backend_pool_using_backup(const struct backend_pool *p)
{
	(void)p;
	return false;
}
