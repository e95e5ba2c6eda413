/* killpoint.so: an LD_PRELOAD shim that SIGKILLs the server at an exact step, so a crash
 * between two filesystem operations can be reproduced every time (the `crash` scenario's
 * "kill points"). Built at run time: cc -shared -fPIC -O2 -o killpoint.so killpoint.c -ldl
 *
 * It wraps rename(2), unlink(2), unlinkat(2) and linkat(2)/link(2) (what Rust's
 * std::fs::rename, remove_file, remove_dir_all and hard_link call) and, before the real call,
 * kills the process with SIGKILL when:
 *   KP_OP       is "rename", "unlink" (unlink and unlinkat of a file) or "link" and names
 *               this call,
 *   KP_PATTERN  fnmatch(3)-matches the target path (rename: the new name; link: the new
 *               name; unlink: the path; unlinkat: the folder of its fd + "/" + the name),
 *   KP_EXCLUDE  (optional) does not match it,
 *   and KP_SKIP (optional, default 0) earlier matching calls have been let through.
 * With KP_AFTER=1 the real call runs first and the kill follows it. KP_LOG (optional) gets
 * one line naming the call that was killed. Without KP_OP the shim does nothing.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int seen;

static int wanted(const char *op, const char *path) {
    const char *want = getenv("KP_OP");
    if (!want || !path || strcmp(want, op) != 0) return 0;
    const char *pat = getenv("KP_PATTERN");
    if (!pat || fnmatch(pat, path, 0) != 0) return 0;
    const char *ex = getenv("KP_EXCLUDE");
    if (ex && *ex && fnmatch(ex, path, 0) == 0) return 0;
    const char *skip = getenv("KP_SKIP");
    int n = __atomic_fetch_add(&seen, 1, __ATOMIC_SEQ_CST);
    return n >= (skip ? atoi(skip) : 0);
}

static void die(const char *op, const char *path) {
    const char *log = getenv("KP_LOG");
    if (log) {
        int fd = open(log, O_WRONLY | O_APPEND | O_CREAT, 0644);
        if (fd >= 0) {
            dprintf(fd, "%s %s\n", op, path);
            close(fd);
        }
    }
    kill(getpid(), SIGKILL);
    pause();
}

static int after(void) {
    const char *a = getenv("KP_AFTER");
    return a && *a == '1';
}

int rename(const char *old, const char *new) {
    static int (*real)(const char *, const char *);
    if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    int hit = wanted("rename", new);
    if (hit && !after()) die("rename", new);
    int r = real(old, new);
    if (hit) die("rename", new);
    return r;
}

int unlink(const char *path) {
    static int (*real)(const char *);
    if (!real) real = (int (*)(const char *))dlsym(RTLD_NEXT, "unlink");
    int hit = wanted("unlink", path);
    if (hit && !after()) die("unlink", path);
    int r = real(path);
    if (hit) die("unlink", path);
    return r;
}

int unlinkat(int dirfd, const char *name, int flags) {
    static int (*real)(int, const char *, int);
    if (!real) real = (int (*)(int, const char *, int))dlsym(RTLD_NEXT, "unlinkat");
    char full[8192];
    const char *path = name;
    if (name && name[0] != '/' && dirfd != AT_FDCWD && !(flags & AT_REMOVEDIR)) {
        char link[64], dir[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
        ssize_t n = readlink(link, dir, sizeof dir - 1);
        if (n > 0) {
            dir[n] = 0;
            snprintf(full, sizeof full, "%s/%s", dir, name);
            path = full;
        }
    }
    int hit = !(flags & AT_REMOVEDIR) && wanted("unlink", path);
    if (hit && !after()) die("unlink", path);
    int r = real(dirfd, name, flags);
    if (hit) die("unlink", path);
    return r;
}

int linkat(int olddirfd, const char *old, int newdirfd, const char *new, int flags) {
    static int (*real)(int, const char *, int, const char *, int);
    if (!real) real = (int (*)(int, const char *, int, const char *, int))dlsym(RTLD_NEXT, "linkat");
    int hit = wanted("link", new);
    if (hit && !after()) die("link", new);
    int r = real(olddirfd, old, newdirfd, new, flags);
    if (hit) die("link", new);
    return r;
}

int link(const char *old, const char *new) {
    static int (*real)(const char *, const char *);
    if (!real) real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "link");
    int hit = wanted("link", new);
    if (hit && !after()) die("link", new);
    int r = real(old, new);
    if (hit) die("link", new);
    return r;
}
