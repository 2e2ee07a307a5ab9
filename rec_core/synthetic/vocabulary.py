"""The words of the synthetic world: topic and sub-topic vocabulary, caption templates, generic hashtags.

Pure data. Words are real English (or well-known names), so a sentence encoder places the
captions of one sub-topic near each other; :mod:`rec_core.synthetic.taxonomy` turns them into topics.
"""

from __future__ import annotations

# topic -> (topic words, topic hashtags, {subtopic: (words, hashtags)}), comma separated. Words are real English
# (or well-known names) so that a sentence encoder places captions of one sub-topic together.
VOCAB: dict[str, tuple[str, str, dict[str, tuple[str, str]]]] = {
    "cooking": (
        "recipe, kitchen, dinner, homemade, delicious, chef, cooking, food",
        "cooking, foodtok",
        {
            "baking": (
                "sourdough, bread, croissant, cake, cookies, frosting, oven, flour, butter, dough, pastry, "
                "cinnamon rolls, brownies, muffins",
                "baking, sourdough, cakedecorating, pastry",
            ),
            "streetfood": (
                "tacos, ramen, dumplings, noodles, skewers, food truck, night market, spicy, burrito, kebab, "
                "pad thai, bao buns, fried chicken",
                "streetfood, foodie, ramen, tacos",
            ),
            "mealprep": (
                "meal prep, salad, quinoa, chicken breast, protein bowl, avocado, vegetables, smoothie, oats, "
                "lentils, lunch box, macros, tofu",
                "mealprep, healthyeating, highprotein, vegan",
            ),
            "bbq": (
                "barbecue, brisket, grill, smoker, ribs, steak, charcoal, burgers, pulled pork, marinade, sausages, "
                "wood fire",
                "bbq, grilling, brisket, steak",
            ),
        },
    ),
    "fitness": (
        "workout, gym, fitness, training, strength, sweat, exercise, gains",
        "fitness, gymtok",
        {
            "yoga": (
                "yoga, stretching, flexibility, meditation, breathing, yoga mat, downward dog, mindfulness, balance, "
                "pilates, vinyasa flow, calm",
                "yoga, stretching, mindfulness, pilates",
            ),
            "weightlifting": (
                "deadlift, squat, bench press, barbell, dumbbells, personal record, powerlifting, bulking, "
                "protein shake, muscle, hypertrophy, heavy reps",
                "powerlifting, deadlift, bodybuilding, gymmotivation",
            ),
            "running": (
                "running, marathon, sprint, trail run, pace, sneakers, half marathon, 5k, cardio, endurance, "
                "race day, treadmill",
                "running, marathon, runner, cardio",
            ),
            "calisthenics": (
                "pull ups, push ups, handstand, muscle up, home workout, plank, core, abs, bodyweight, "
                "resistance bands, burpees",
                "calisthenics, homeworkout, abs, pullups",
            ),
        },
    ),
    "gaming": (
        "gaming, gamer, controller, console, level, boss fight, gameplay, stream",
        "gaming, gamer",
        {
            "speedrun": (
                "speedrun, world record, glitch, any percent, splits, skip, frame perfect, mario, zelda, timer, "
                "route, sequence break",
                "speedrun, worldrecord, glitch, speedrunning",
            ),
            "minecraft": (
                "minecraft, survival, redstone, creeper, diamonds, build, village, castle, mods, server, blocks, "
                "nether",
                "minecraft, minecraftbuilds, redstone, survival",
            ),
            "esports": (
                "esports, tournament, clutch, headshot, valorant, league of legends, ranked, aim, team fight, fps, "
                "competitive, pro player",
                "esports, valorant, clutch, fps",
            ),
            "retro": (
                "retro games, arcade, nintendo, cartridge, pixel art, sega, handheld, emulator, nostalgia, 8-bit, "
                "game boy, collection",
                "retrogaming, nintendo, arcade, pixelart",
            ),
        },
    ),
    "pets": (
        "pets, cute, animals, adorable, furry, rescue, vet, pet owner",
        "pets, petsoftiktok",
        {
            "cats": (
                "cat, kitten, meow, purring, litter box, catnip, whiskers, cat tree, tabby, zoomies, scratching post, "
                "cat food",
                "cats, catsoftiktok, kitten, catlover",
            ),
            "dogs": (
                "dog, puppy, golden retriever, leash, fetch, dog park, treats, bark, corgi, tricks, walkies, tail wag",
                "dogs, puppy, dogsoftiktok, goldenretriever",
            ),
            "birds": (
                "parrot, budgie, cockatiel, feathers, talking bird, perch, seeds, chirping, birdcage, macaw, flock, "
                "wings",
                "birds, parrot, budgie, birdlover",
            ),
            "aquarium": (
                "aquarium, fish tank, goldfish, betta, coral reef, shrimp, aquascape, water plants, filter, guppies, "
                "clownfish, algae",
                "aquarium, fishtank, aquascape, betta",
            ),
        },
    ),
    "travel": (
        "travel, trip, vacation, adventure, explore, destination, passport, journey",
        "travel, wanderlust",
        {
            "hiking": (
                "hiking, mountain, trail, summit, backpack, waterfall, camping, forest, national park, tent, sunrise, "
                "alpine lake",
                "hiking, camping, mountains, outdoors",
            ),
            "beaches": (
                "beach, island, ocean, sunset, snorkeling, palm trees, resort, sand, turquoise water, lagoon, boat, "
                "paradise",
                "beach, islandlife, ocean, summer",
            ),
            "citytrips": (
                "city break, museum, cafe, old town, skyline, metro, street art, rooftop, cathedral, walking tour, "
                "paris, tokyo",
                "citytrip, paris, tokyo, streetphotography",
            ),
            "vanlife": (
                "van life, campervan, road trip, van build, off grid, solar panel, highway, desert, campsite, nomad, "
                "converted van",
                "vanlife, roadtrip, campervan, offgrid",
            ),
        },
    ),
    "music": (
        "music, song, musician, cover, live, melody, tune, playlist",
        "music, musician",
        {
            "guitar": (
                "guitar, acoustic, electric guitar, riff, fingerstyle, chords, strumming, guitar solo, amp, pedal, "
                "fretboard, capo",
                "guitar, guitarist, acoustic, guitarcover",
            ),
            "piano": (
                "piano, keys, sheet music, classical, chopin, grand piano, sonata, pianist, arpeggio, beethoven, "
                "nocturne, scales",
                "piano, pianist, classicalmusic, pianocover",
            ),
            "singing": (
                "singing, vocals, high notes, harmony, acapella, karaoke, vocal coach, choir, falsetto, ballad, "
                "voice, duet",
                "singing, vocals, singer, acapella",
            ),
            "beats": (
                "beat making, producer, hip hop, 808, drum kit, sampling, studio, mixing, synth, trap beat, lofi, "
                "bassline",
                "producer, beatmaker, hiphop, lofi",
            ),
        },
    ),
    "dance": (
        "dance, choreography, moves, dancer, routine, dance challenge, stage, rhythm",
        "dance, dancechallenge",
        {
            "streetdance": (
                "hip hop dance, breakdance, freestyle, popping, locking, krump, dance crew, dance battle, b-boy, "
                "street dance, cypher, grooves",
                "hiphopdance, breakdance, freestyle, streetdance",
            ),
            "ballet": (
                "ballet, pointe shoes, ballerina, pirouette, plie, barre, tutu, grace, arabesque, recital, swan lake, "
                "leotard",
                "ballet, ballerina, pointe, balletdancer",
            ),
            "kpop": (
                "kpop, idol, dance cover, bts, blackpink, fancam, comeback, mirrored, lightstick, chorus, "
                "group formation",
                "kpop, kpopdance, dancecover, bts",
            ),
            "latin": (
                "salsa, bachata, latin dance, dance partner, spins, tango, merengue, social dance, cuban, footwork, "
                "lead and follow, dance floor",
                "salsa, bachata, latindance, tango",
            ),
        },
    ),
    "beauty": (
        "beauty, glow, look, style, aesthetic, tutorial, products, routine",
        "beauty, beautytok",
        {
            "makeup": (
                "makeup, eyeliner, foundation, lipstick, contour, eyeshadow, mascara, blush, concealer, "
                "makeup brushes, glam, highlighter",
                "makeup, makeuptutorial, eyeliner, glam",
            ),
            "skincare": (
                "skincare, serum, moisturizer, sunscreen, acne, retinol, cleanser, glowing skin, face mask, "
                "hyaluronic acid, toner, pores",
                "skincare, skincareroutine, glowingskin, acne",
            ),
            "fashion": (
                "outfit, streetwear, thrift haul, vintage, denim, hoodie, leather jacket, lookbook, accessories, "
                "capsule wardrobe, designer bag, fit check",
                "ootd, fashion, streetwear, thrifting",
            ),
            "nails": (
                "nails, nail art, manicure, gel polish, acrylics, chrome nails, french tips, cuticles, nail salon, "
                "press ons, glitter, pastel",
                "nails, nailart, manicure, gelnails",
            ),
        },
    ),
    "tech": (
        "tech, technology, review, setup, device, specs, upgrade, features",
        "tech, techtok",
        {
            "smartphones": (
                "smartphone, iphone, android, camera test, battery life, screen, foldable, fast charger, unboxing, "
                "pixel phone, phone case, 5g",
                "iphone, android, smartphone, unboxing",
            ),
            "pcbuild": (
                "pc build, graphics card, gpu, cpu, motherboard, rgb, water cooling, gaming pc, desk setup, "
                "mechanical keyboard, monitor, cable management",
                "pcbuild, gamingpc, desksetup, rgb",
            ),
            "coding": (
                "coding, python, javascript, programmer, software, debugging, algorithm, terminal, web app, "
                "developer, code review, open source",
                "coding, programming, python, developer",
            ),
            "gadgets": (
                "gadgets, smart home, drone, robot vacuum, smartwatch, earbuds, vr headset, 3d printer, kickstarter, "
                "tech gift, projector, wireless charger",
                "gadgets, smarthome, drone, 3dprinting",
            ),
        },
    ),
    "diy": (
        "diy, project, handmade, home, tools, build, makeover, maker",
        "diy, homeproject",
        {
            "woodworking": (
                "woodworking, table saw, oak, carpentry, workbench, chisel, plywood, sanding, walnut, joinery, "
                "cutting board, epoxy",
                "woodworking, woodwork, carpentry, maker",
            ),
            "gardening": (
                "gardening, tomatoes, seedlings, compost, houseplants, raised bed, harvest, succulents, soil, "
                "pruning, greenhouse, flowers",
                "gardening, plants, houseplants, growyourown",
            ),
            "interior": (
                "interior design, living room, decor, paint, wallpaper, renovation, bedroom makeover, cozy, "
                "minimalist, shelves, lighting, rug",
                "interiordesign, homedecor, renovation, roommakeover",
            ),
            "crafts": (
                "knitting, crochet, yarn, embroidery, sewing, quilting, pottery, clay, candle making, scrapbook, "
                "beads, watercolor",
                "crochet, knitting, pottery, crafts",
            ),
        },
    ),
    "science": (
        "science, learn, facts, education, explained, curious, research, teacher",
        "science, learnontiktok",
        {
            "space": (
                "space, planets, black hole, nasa, galaxy, telescope, rocket launch, mars, astronaut, stars, moon, "
                "nebula",
                "space, astronomy, nasa, universe",
            ),
            "chemistry": (
                "chemistry, experiment, chemical reaction, molecules, lab, elements, periodic table, acid, crystals, "
                "explosion, beaker, liquid nitrogen",
                "chemistry, experiment, sciencelab, stem",
            ),
            "history": (
                "history, ancient rome, medieval, empire, pyramids, world war, archaeology, kings, castles, egypt, "
                "vikings, historical facts",
                "history, historytok, ancientrome, archaeology",
            ),
            "languages": (
                "language learning, spanish, japanese, vocabulary, grammar, pronunciation, french, fluent, "
                "flashcards, accent, polyglot, duolingo",
                "languagelearning, spanish, japanese, polyglot",
            ),
        },
    ),
    "sports": (
        "sports, athlete, match, game day, team, score, season, championship",
        "sports, athlete",
        {
            "soccer": (
                "soccer, football, goal, free kick, striker, penalty, dribbling, world cup, stadium, messi, ronaldo, "
                "goalkeeper",
                "soccer, football, goals, worldcup",
            ),
            "basketball": (
                "basketball, dunk, three pointer, nba, crossover, hoops, court, buzzer beater, layup, rebound, "
                "jersey, streetball",
                "basketball, nba, hoops, dunk",
            ),
            "skateboarding": (
                "skateboarding, kickflip, skatepark, ollie, grind, halfpipe, skate deck, trucks, handrail, heelflip, "
                "longboard, street skating",
                "skateboarding, skate, kickflip, skatepark",
            ),
            "surfing": (
                "surfing, waves, surfboard, barrel, swell, wetsuit, paddle out, wipeout, reef break, big wave, tide, "
                "surf trip",
                "surfing, surf, waves, surflife",
            ),
        },
    ),
}


def split_words(words: str, sep: str = ",") -> tuple[str, ...]:
    return tuple(w.strip() for w in words.split(sep))


# Caption templates: {a} and {b} are two different sub-topic words, {t} a topic word, {o} an opener, {g} a tail.
TEMPLATES = (
    "{o} {a} {g}",
    "{a} and {b} {g}",
    "{o} {a} with {b}",
    "{a} {t} {g}",
    "{o} {t}: {a} edition",
    "my {a} {t} {g}",
    "{a} vs {b}, which one wins?",
    "{o} {a}, {b} and more {t}",
    "can't stop thinking about this {a}",
    "{t} tip: {a} + {b}",
    "rating every {a} {g}",
    "{a} {b} {g}",
    "when the {a} hits different {g}",
    "{o} {b} {a} {t}",
)
OPENERS = split_words(
    "POV:|day 12 of|quick|trying|the best|storytime:|how to nail|watch this|underrated|first time|testing|easy|"
    "3 tips for|beginner|my honest take on|ultimate|weekend",
    "|",
)
TAILS = split_words(
    "you need to try this|wait for the end|part 2|no way|so satisfying|thoughts?|for beginners|in 60 seconds|"
    "this changed everything|honest review|do you agree?|follow for more|save this for later|10/10|at 3am|",
    "|",
)  # the empty last tail: many captions have none
GENERIC_TAGS = ("fyp", "foryou", "viral", "trending", "foryoupage", "explore")
