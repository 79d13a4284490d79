# The two commands of the README, plus a few conveniences.
.PHONY: demo test kafka bench-quality clean-cache

demo:            ## set up (cached venv) and run the service on the bundled demo stream, no Kafka
	./scripts/xtream.sh run

test:            ## set up (cached venv + Kafka jars) and run the whole suite against a real broker
	./scripts/test.sh

kafka:           ## a local single-node Kafka on 127.0.0.1:9092, in the foreground
	./deploy/kafka/run-local.sh

clean-cache:     ## forget the cached venvs and Kafka jars
	rm -rf "$${XTREAM_CACHE:-$$HOME/.cache/xtream}"
