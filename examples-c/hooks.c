/*
 * hooks: every hook of libprefork, each printing what it sees on stdout, plus a custom
 * command producer (posix_spawn instead of the library's own re-exec) and a custom logger.
 *
 *   hooks [HOST:PORT] [CHILDREN]      (defaults: 127.0.0.1:8080 and 2)
 *
 * Try: kill one child (kill -9 <pid>) to see on_child_exit, on_child_spawn and
 * on_child_recover; kill the master with SIGKILL to see each child's on_master_death.
 */
#define _POSIX_C_SOURCE 200809L

#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prefork.h"

extern char **environ;

struct app {
    char **argv; /* what each child is started with: this program's own argv */
};

static void say(const char *line) {
    fputs(line, stdout);
    fflush(stdout);
}

static int init_child(void *user_data) {
    char line[64];
    (void)user_data;
    snprintf(line, sizeof line, "init_child pid=%ld\n", (long)getpid());
    say(line);
    return 0;
}

static void exit_child(void *user_data) {
    char line[64];
    (void)user_data;
    snprintf(line, sizeof line, "exit_child pid=%ld\n", (long)getpid());
    say(line);
}

static void handle(void *user_data, const prefork_request *req, prefork_response *resp) {
    char body[64];
    (void)user_data;
    (void)req;
    int n = snprintf(body, sizeof body, "served by %ld\n", (long)getpid());
    prefork_response_write(resp, body, (size_t)n);
}

static int on_child_spawn(void *user_data, int32_t pid) {
    char line[64];
    (void)user_data;
    snprintf(line, sizeof line, "on_child_spawn pid=%ld\n", (long)pid);
    say(line);
    return 0;
}

static int on_master_ready(void *user_data, const int32_t *pids, size_t count) {
    char addr[PREFORK_ADDR_STRLEN];
    (void)user_data;
    if (prefork_local_addr(addr, sizeof addr) != PREFORK_OK) return 1;
    printf("on_master_ready master=%ld children=", (long)getpid());
    for (size_t i = 0; i < count; i++) printf(i ? ",%ld" : "%ld", (long)pids[i]);
    printf(" addr=%s", addr);
    say("\n");
    return 0;
}

static int on_child_recover(void *user_data, int32_t old_pid, int32_t new_pid) {
    char line[80];
    (void)user_data;
    snprintf(line, sizeof line, "on_child_recover old=%ld new=%ld\n", (long)old_pid,
             (long)new_pid);
    say(line);
    return 0;
}

static void on_child_exit(void *user_data, int32_t pid, int32_t exit_code, int32_t signal) {
    char line[80];
    (void)user_data;
    snprintf(line, sizeof line, "on_child_exit pid=%ld code=%ld signal=%ld\n", (long)pid,
             (long)exit_code, (long)signal);
    say(line);
}

static void on_master_death(void *user_data) {
    char line[64];
    (void)user_data;
    snprintf(line, sizeof line, "on_master_death child=%ld\n", (long)getpid());
    say(line);
}

/* Starts a child the way the library would: same program and argv, PREFORK_CHILD=1, the
 * listener at fd 3 and the lifeline at fd 4 (dup2 clears their close-on-exec flag). */
static int32_t command_producer(void *user_data, int listener_fd, int lifeline_fd,
                                size_t slot) {
    struct app *app = user_data;
    size_t n = 0;
    while (environ[n]) n++;
    char **env = calloc(n + 2, sizeof *env);
    if (!env) return -1;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "PREFORK_CHILD=", 14) != 0) env[k++] = environ[i];
    env[k++] = "PREFORK_CHILD=1";
    env[k] = NULL;

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, listener_fd, 3);
    posix_spawn_file_actions_adddup2(&actions, lifeline_fd, 4);
    pid_t pid;
    int err = posix_spawn(&pid, "/proc/self/exe", &actions, NULL, app->argv, env);
    posix_spawn_file_actions_destroy(&actions);
    free(env);

    printf("command_producer slot=%zu listener_fd=%d lifeline_fd=%d -> %s %ld\n", slot,
           listener_fd, lifeline_fd, err ? "error" : "pid", err ? (long)err : (long)pid);
    fflush(stdout);
    return err ? -1 : (int32_t)pid;
}

static void log_line(void *user_data, prefork_log_level level, const char *msg, size_t len) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    (void)user_data;
    (void)len;
    if (level >= PREFORK_LOG_INFO)
        fprintf(stderr, "[hooks %ld] %s: %s\n", (long)getpid(), names[level], msg);
}

int main(int argc, char **argv) {
    static struct app app;
    const char *addr = argc > 1 ? argv[1] : "127.0.0.1:8080";
    long children = argc > 2 ? strtol(argv[2], NULL, 10) : 2;
    prefork_handler handler = {
        .user_data = &app,
        .init_child = init_child,
        .handle = handle,
        .exit_child = exit_child,
    };
    prefork_hooks hooks = {
        .user_data = &app,
        .on_child_spawn = on_child_spawn,
        .on_master_ready = on_master_ready,
        .on_child_recover = on_child_recover,
        .on_child_exit = on_child_exit,
        .on_master_death = on_master_death,
        .command_producer = command_producer,
    };
    prefork *server;
    app.argv = argv;

    if (prefork_new(&handler, &server) != PREFORK_OK ||
        prefork_set_children(server, children > 0 ? (uint32_t)children : 1) != PREFORK_OK ||
        prefork_set_hooks(server, &hooks) != PREFORK_OK ||
        prefork_set_logger(server, log_line, NULL, NULL) != PREFORK_OK) {
        fprintf(stderr, "hooks: %s\n", prefork_last_error());
        return 1;
    }
    prefork_result r = prefork_listen_and_serve(server, addr);
    if (r != PREFORK_OK) fprintf(stderr, "hooks: %s\n", prefork_last_error());
    prefork_free(server);
    return r == PREFORK_OK ? 0 : 1;
}
