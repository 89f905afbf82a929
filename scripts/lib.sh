# Shell helpers shared by the scripts that start local test servers (source it).

# wait_port HOST PORT SECONDS: returns 0 as soon as HOST:PORT accepts a TCP connection,
# 1 after SECONDS.
wait_port() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        if (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}
