# frozen_string_literal: true

# A heavy app for bench/preload.sh: at load time it builds HEAVY_MB MiB of
# read-only state out of many small objects (hashes, strings, integers,
# floats, as an app's heap holds, not one string blob) and burns BOOT_MS of
# CPU, as an app requiring its framework does. The same file runs three ways:
#
#   ruby heavy.rb                                 # forkmaster, exec or --preload
#   unicorn -c unicorn.conf.rb heavy.ru           # preload_app true
#
# Run as a script it calls ForkmasterPreload.serve (which returns at once in
# exec mode), then serves HeavyApp over HTTP on the inherited fd 3 and sends
# READY=1 to NOTIFY_SOCKET. Each worker appends its pid to HEAVY_READY_FILE,
# if set, once it is about to serve (unicorn does it from its after_fork
# hook). TERM or QUIT finishes the requests in flight and exits. Answers
# `pid=PID items=N`.

require 'socket'

module Heavy
  PAGE = 4096

  def self.rss_bytes
    File.read('/proc/self/statm').split[1].to_i * PAGE
  end

  # Grows a hash of records until the process's RSS grew by `mib` MiB.
  def self.build_state(mib)
    state = {}
    target = rss_bytes + (mib * 1024 * 1024)
    i = 0
    while rss_bytes < target
      2000.times do
        state["user:#{i}"] = {
          'id' => i,
          'name' => "user-#{i}-#{'x' * (i % 40)}",
          'score' => i * 0.5,
          'tags' => ["t#{i % 7}", "g#{i % 13}"]
        }
        i += 1
      end
    end
    state.freeze
  end

  def self.burn_cpu(ms)
    deadline = Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) + (ms / 1000.0)
    n = 0
    n += (1..1000).sum while Process.clock_gettime(Process::CLOCK_PROCESS_CPUTIME_ID) < deadline
    n
  end

  STATE = build_state(Integer(ENV.fetch('HEAVY_MB', '64')))
  burn_cpu(Integer(ENV.fetch('BOOT_MS', '300')))

  def self.mark_ready
    path = ENV.fetch('HEAVY_READY_FILE', '')
    File.open(path, 'a') { |f| f.puts(Process.pid) } unless path.empty?
  end

  def self.notify_ready
    addr = ENV.fetch('NOTIFY_SOCKET', '')
    return if addr.empty?

    addr = "\0#{addr[1..]}" if addr.start_with?('@')
    sock = Socket.new(:UNIX, :DGRAM)
    sock.send('READY=1', 0, Socket.pack_sockaddr_un(addr))
  rescue SystemCallError
    nil # best effort, as sd_notify(3): no listener is not this app's failure
  ensure
    sock&.close
  end

  # The same Rack app unicorn runs (heavy.ru).
  APP = lambda do |_env|
    [200, { 'content-type' => 'text/plain' }, ["pid=#{Process.pid} items=#{STATE.size}\n"]]
  end

  # A minimal HTTP/1.1 server for APP: one thread per connection, one
  # request per connection (`Connection: close`).
  def self.serve_http(server)
    stopping = false
    %w[TERM QUIT].each { |sig| trap(sig) { stopping = true } }
    threads = []
    mark_ready
    notify_ready
    until stopping
      # Every worker polls the one listener: accept_nonblock, as a blocking
      # accept would hang in the worker that lost the race for a connection.
      next unless server.wait_readable(0.2)

      begin
        client, = server.accept_nonblock
      rescue IO::WaitReadable, Errno::EINTR
        next
      end
      threads << Thread.new(client) { |c| answer(c) }
      threads.select!(&:alive?)
    end
    threads.each(&:join)
  end

  def self.answer(client)
    request = +''
    request << client.readpartial(16_384) until request.include?("\r\n\r\n")
    status, headers, body = APP.call({ 'REQUEST_METHOD' => request[/\A\S+/] })
    text = body.join
    head = headers.map { |k, v| "#{k}: #{v}\r\n" }.join
    client.write("HTTP/1.1 #{status} OK\r\n#{head}content-length: #{text.bytesize}\r\n" \
                 "connection: close\r\n\r\n#{text}")
  rescue IOError, SystemCallError
    nil
  ensure
    client.close
  end
end

if $PROGRAM_NAME == __FILE__
  if ENV.fetch('FORKMASTER_PRELOAD_FD', '') != ''
    require_relative '../../contrib/preload/ruby/forkmaster_preload'
    ForkmasterPreload.serve
  end
  Heavy.serve_http(Socket.for_fd(3))
end
